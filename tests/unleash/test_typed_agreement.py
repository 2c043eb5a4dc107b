"""The issue's typed acceptance test: typed flags created through flagrail's admin API,
served on ``/api/client/features``, and read by the official Unleash SDKs (the Python
``UnleashClient`` and the Node.js ``unleash-client`` 6.12.1) give every one of 10,000
tenants (and no tenant, and "") the variant and value flagrail's ``FlagClient`` gives,
on SQLite and on PostgreSQL. One server per database for the whole module. The answers
come from the served payload, not from the database under it, so PostgreSQL (which
only has to serve the same payload) is asked about 1,000 of the tenants: every listed,
pinned-near and unusual one among them; SQLite about all 10,000.

The Node SDK is installed once by npm into ``.cache/node/unleash-client-<version>``
(git-ignored) and reused across runs. Under ``CI=true`` a missing node/npm or a failed
install is a failure; elsewhere the Node test skips with the reason.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from unleash_server import OFF, ON, TENANTS, UNUSUAL, FlagrailServer, serve
from UnleashClient import UnleashClient
from UnleashClient.utils import InstanceAllowType

from flags.client import FlagClient
from flags.unleash.mapping import TENANT_FIELD

REPO = Path(__file__).resolve().parents[2]
NODE_SDK_VERSION = "6.12.1"
NODE_CACHE = REPO / ".cache" / "node" / f"unleash-client-{NODE_SDK_VERSION}"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Every tenant the suite asks for: 10,000 (some unusual), "" (= no tenant) and no tenant.
ASKED: list[str | None] = [None, "", *TENANTS]
# On PostgreSQL: the first 995 tenants (the listed ones are among the first 300, pins and
# per-tenant variants below 1,000 too) and the unusual ones.
ASKED_POSTGRES: list[str | None] = [None, "", *TENANTS[: 1_000 - len(UNUSUAL)], *UNUSUAL]
LISTED_ON = sorted(ON | {" padded "})
LISTED_OFF = sorted(OFF | {"x" * 200})
TIERS = [{"name": n, "value": n.upper()} for n in ("gold", "silver", "bronze", "safe")]


def tier(key: str) -> dict[str, Any]:
    return {
        "key": key,
        "type": "string",
        "variants": TIERS,
        "off_variant": "safe",
        "on_variant": "gold",
    }


# (create body, production state body, killed?) per typed flag: every shape of the issue.
TYPED: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "tier.split": (
        tier("tier.split"),
        {
            "enabled": True,
            "rollout": 100,
            "split": [
                {"variant": "gold", "weight": 200},
                {"variant": "silver", "weight": 300},
                {"variant": "bronze", "weight": 500},
            ],
            "tenants_off": LISTED_OFF,
            "tenant_variants": {"tenant-7": "safe", " padded ": "silver", "tënant-ü": "gold"},
        },
        False,
    ),
    "tier.partial": (
        tier("tier.partial"),
        {
            "enabled": True,
            "rollout": 50,
            "split": {"gold": 500, "silver": 500},
            "tenants_on": LISTED_ON,
            "tenants_off": LISTED_OFF,
        },
        False,
    ),
    "tier.pins": (
        tier("tier.pins"),
        {
            "enabled": True,
            "rollout": 30,
            "tenant_variants": {f"tenant-{i}": "bronze" for i in range(0, 3000, 7)},
        },
        False,
    ),
    "tier.listed": (tier("tier.listed"), {"enabled": True, "tenants_on": LISTED_ON}, False),
    "tier.on": (tier("tier.on"), {"enabled": True, "rollout": 100}, False),
    "tier.disabled": (tier("tier.disabled"), {"enabled": False, "rollout": 100}, False),
    "tier.killed": (
        tier("tier.killed"),
        {"enabled": True, "rollout": 100, "split": {"gold": 400, "silver": 600}},
        True,
    ),
    "cache.ttl": (
        {
            "key": "cache.ttl",
            "type": "number",
            "variants": [
                {"name": "short", "value": 30},
                {"name": "long", "value": 3600},
                {"name": "ratio", "value": 0.25},
            ],
            "off_variant": "short",
            "on_variant": "long",
        },
        {"enabled": True, "rollout": 60, "split": {"long": 700, "ratio": 300}},
        False,
    ),
    "layout.json": (
        {
            "key": "layout.json",
            "type": "json",
            "variants": [
                {"name": "grid", "value": {"cols": [1, 2, 3], "dense": True, "ü": None}},
                {"name": "list", "value": ["a", {"b": 2.5}]},
                {"name": "none", "value": None},
            ],
            "off_variant": "none",
            "on_variant": "grid",
        },
        {
            "enabled": True,
            "rollout": 100,
            "split": {"grid": 650, "list": 350},
            "tenant_variants": {"tenant-3": "none"},
        },
        False,
    ),
}
# Boolean flags for the Node SDK's is_enabled (the Python SDK's are in test_unleash_agreement).
BOOLEANS: dict[str, dict[str, Any]] = {
    "bool.combo": {
        "enabled": True,
        "rollout": 50,
        "tenants_on": LISTED_ON,
        "tenants_off": LISTED_OFF,
    },
    "bool.on": {"enabled": True, "rollout": 100},
    "bool.listed": {"enabled": True, "rollout": 0, "tenants_on": LISTED_ON},
    "bool.rollout-1": {"enabled": True, "rollout": 1},
}


def _unavailable(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what}, and under CI=true that is a failure, not a skip")
    pytest.skip(what)


def populate(server: FlagrailServer, admin_token: str) -> None:
    """Create every flag and state through the admin API, as an operator would."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=30
    ) as http:

        def call(method: str, path: str, body: dict[str, Any]) -> None:
            response = http.request(method, path, json=body)
            assert response.status_code in (200, 201), (path, response.text)

        for key, (create, state, killed) in TYPED.items():
            call("POST", "/admin/flags", create)
            call("PATCH", f"/admin/flags/{key}/environments/production", state)
            if killed:
                call("POST", f"/admin/flags/{key}/kill", {"reason": "drill"})
        for key, state in BOOLEANS.items():
            call("POST", "/admin/flags", {"key": key})
            call("PATCH", f"/admin/flags/{key}/environments/production", state)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def typed_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FlagrailServer]:
    """One real server per database, its flags created through the admin API."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("typed-agreement") / "flagrail.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url, drop = f"sqlite:///{path}", None
    else:
        databases = request.getfixturevalue("postgres_databases")
        if databases is None:
            _unavailable("PostgreSQL is not available")
        name = databases.create()
        url = f"postgresql+psycopg://{databases_url_user()}/{name}"
        drop = (databases, name)
    try:
        with serve(url) as server:
            _, admin = server.store.create_token("admin", "admin", None, actor="test")
            populate(server, admin)
            yield server
    finally:
        if drop is not None:
            drop[0].drop(drop[1])


@pytest.fixture
def asked(request: pytest.FixtureRequest) -> list[str | None]:
    """The tenants this test asks about: ASKED on SQLite, ASKED_POSTGRES on PostgreSQL."""
    database = request.node.callspec.params["typed_server"]
    return ASKED if database == "sqlite" else ASKED_POSTGRES


def databases_url_user() -> str:
    """``user@host:port`` of the test PostgreSQL (tests/conftest.py's settings)."""
    user = os.environ.get("FLAGRAIL_TEST_PG_USER", "postgres")
    host = os.environ.get("FLAGRAIL_TEST_PG_HOST", "127.0.0.1")
    port = os.environ.get("FLAGRAIL_TEST_PG_PORT", "5432")
    return f"{user}@{host}:{port}"


def payload_value(payload: dict[str, str] | None) -> Any:
    """A variant payload's value as flagrail serves it (number and json are JSON text)."""
    if payload is None:
        return None
    return payload["value"] if payload["type"] == "string" else json.loads(payload["value"])


def flagrail_variants(
    server: FlagrailServer, asked: list[str | None]
) -> dict[str, list[tuple[Any, Any]]]:
    """FlagClient's (variant, value) per typed flag, for each tenant of ``asked``."""
    client = FlagClient.from_snapshot(server.sdk_snapshot())
    return {key: [client.variant(key, t)[:2] for t in asked] for key in TYPED}


def test_python_unleash_client__typed_flags__agree_with_flag_client_for_10000_tenants(
    typed_server: FlagrailServer, asked: list[str | None], tmp_path: Path
) -> None:
    """UnleashClient.get_variant == FlagClient.variant (name and value), every tenant."""
    # Given: UnleashClient has fetched production's features from the server
    unleash = UnleashClient(
        url=typed_server.unleash_url,
        app_name="typed-agreement",
        environment="production",
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        refresh_interval=60,
        disable_metrics=True,
        disable_registration=True,
        custom_headers={"Authorization": typed_server.production},
        cache_directory=str(tmp_path),
        request_timeout=5,
        request_retries=0,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    unleash.initialize_client()
    try:
        assert set(TYPED) <= set(unleash.feature_definitions())
        expected = flagrail_variants(typed_server, asked)
        # When: it picks a variant for every flag and tenant
        mismatches = []
        for key in TYPED:
            for tenant, want in zip(asked, expected[key], strict=True):
                context = {} if tenant is None else {TENANT_FIELD: tenant}
                got = unleash.get_variant(key, context)
                if (got["name"], payload_value(got.get("payload"))) != want:
                    mismatches.append((key, tenant, got, want))
    finally:
        unleash.destroy()
    # Then: never a difference, and the shapes really deal different variants
    assert mismatches[:5] == []
    assert {name for name, _ in expected["tier.split"]} == {"gold", "silver", "bronze", "safe"}
    assert set(expected["tier.killed"]) == {("safe", "SAFE")}
    assert {v for _, v in expected["cache.ttl"]} == {30, 3600, 0.25}


def node_sdk() -> Path:
    """The directory holding ``node_modules/unleash-client`` at NODE_SDK_VERSION, installed
    by npm on first use (under a file lock: parallel workers install once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        _unavailable("node and npm are not on PATH (needed for the Node SDK agreement)")
    manifest = NODE_CACHE / "node_modules" / "unleash-client" / "package.json"
    NODE_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(NODE_CACHE.parent / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.exists() and json.loads(manifest.read_text())["version"] == NODE_SDK_VERSION:
            return NODE_CACHE
        staging = NODE_CACHE.with_name(f"{NODE_CACHE.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        (staging / "package.json").write_text('{"private": true}\n')
        try:
            done = subprocess.run(
                ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts",
                 f"unleash-client@{NODE_SDK_VERSION}"],
                cwd=staging, capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            detail = "timed out" if done is None else done.stderr.strip()[-500:]
            _unavailable(f"npm install unleash-client@{NODE_SDK_VERSION} failed: {detail}")
        shutil.rmtree(NODE_CACHE, ignore_errors=True)
        staging.rename(NODE_CACHE)
    return NODE_CACHE


def hashes_alike(tenant: str | None) -> bool:
    """Tenants every Unleash SDK buckets alike: ASCII ones (Node's MurmurHash reads the
    low byte of each UTF-16 code unit, the others UTF-8 bytes; docs/unleash.md)."""
    return tenant is None or tenant.isascii()


def test_node_unleash_client__booleans_and_variants__agree_with_flag_client(
    typed_server: FlagrailServer, asked: list[str | None]
) -> None:
    """The Node SDK's isEnabled and getVariant == FlagClient's, for every tenant whose id
    every SDK hashes alike; for the others, only where no hash decides."""
    # Given: the Node SDK, installed once, and a script asking it about every tenant
    sdk = node_sdk()
    job = {
        "url": typed_server.unleash_url + "/",
        "token": typed_server.production,
        "booleans": list(BOOLEANS),
        "typed": list(TYPED),
        "tenants": asked,
    }
    # When: it synchronises with the server and answers
    done = subprocess.run(
        ["node", str(Path(__file__).with_name("node_agreement.js"))],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(sdk / "node_modules")},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    node = json.loads(done.stdout)
    # Then: the answers agree (a differing tenant is always one Node hashes differently)
    flags = FlagClient.from_snapshot(typed_server.sdk_snapshot())
    mismatches = [
        (key, tenant)
        for key in BOOLEANS
        for tenant, got in zip(asked, node["booleans"][key], strict=True)
        if got is not flags.is_enabled(key, tenant)
    ]
    expected = flagrail_variants(typed_server, asked)
    for key in TYPED:
        for tenant, (name, kind, text), want in zip(
            asked, node["typed"][key], expected[key], strict=True
        ):
            payload = None if kind is None else {"type": kind, "value": text}
            if (name, payload_value(payload)) != want:
                mismatches.append((key, tenant))
    assert [m for m in mismatches if hashes_alike(m[1])] == []
    assert {tenant for _, tenant in mismatches} <= {t for t in TENANTS if not t.isascii()}
    # Listed and pinned non-ASCII tenants take no hash: Node agrees on them too.
    index = asked.index("tënant-ü")
    assert node["booleans"]["bool.listed"][index] is True
    assert node["typed"]["tier.split"][index][0] == "gold"
