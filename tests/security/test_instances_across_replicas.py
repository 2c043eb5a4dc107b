"""Issue #14: instance ownership and counter attribution hold across replicas.

Two real ``flagrail serve`` processes share one database (a SQLite file, and a
PostgreSQL database of the module's own). Neither shares memory with the other: an
instance one replica heard is owned in the database, so the other refuses another
token's report for it; counters sent through one replica are attributed to their token
by a plan scheduler that heard none of them; a token's instance cap is counted in the
database; and ``kill?wait=`` names the token of each lagging instance.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from flags.model import StateChange
from flags.plans.model import PlanStatus, parse_plan
from flags.plans.scheduler import PlanScheduler
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore
from flags.store.telemetry import TelemetryStore, sdk_instances
from tests.serve import ServeProcess, wait_all_healthy

ENV = "production"
STAGING = "staging"
CAP = 3


class Replica(ServeProcess):
    """``flagrail serve`` in a subprocess (its own memory, the shared database), scheduler
    off, at most ``CAP`` live instances per token, logging at the server's default level."""

    def __init__(self, database_url: str, log: Path) -> None:
        super().__init__(
            database_url,
            log,
            env={"FLAGRAIL_MAX_INSTANCES_PER_TOKEN": str(CAP)},
            log_level="info",
        )

    def post(self, path: str, token: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            self.base_url + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )

    def instance(self, token: str, instance_id: str, **fields: Any) -> httpx.Response:
        """``POST /sdk/v1/instances`` for ``instance_id`` (10 s interval)."""
        body = {
            "instance_id": instance_id,
            "environment": ENV,
            "host": "app-1",
            "pid": 100,
            "applied_version": 5,
            "interval": 10.0,
            **fields,
        }
        return self.post("/sdk/v1/instances", token, body)


@dataclass
class Pair:
    url: str
    store: SqlFlagStore
    one: Replica
    two: Replica

    def token(self, name: str, role: str = "client") -> tuple[str, str]:
        """A new token for both environments (made in the database): its id and secret."""
        info, secret = self.store.create_token(name, role, [ENV, STAGING], actor="test")
        return info.id, secret


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def pair(
    request: pytest.FixtureRequest,
    root_conftest: ModuleType,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    """Two replicas on one migrated database of this module's own."""
    tmp = tmp_path_factory.mktemp(f"replicas-{request.param}")
    dropped: str | None = None
    if request.param == "sqlite":
        path = tmp / "flagrail.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:
        databases = request.getfixturevalue("postgres_databases")
        if databases is None:
            root_conftest._unavailable("PostgreSQL")
        dropped = databases.create()
        url = root_conftest.pg_url(dropped)
    store = SqlFlagStore(url)
    known = {e.name for e in store.list_environments()}
    for env in (ENV, STAGING):
        if env not in known:
            store.create_environment(env, actor="test")
    replicas = (Replica(url, tmp / "one.log"), Replica(url, tmp / "two.log"))
    try:
        wait_all_healthy(replicas, timeout=90)
        yield Pair(url, store, *replicas)
    finally:
        for replica in replicas:
            replica.stop()
        store.close()
        if dropped is not None:
            request.getfixturevalue("postgres_databases").drop(dropped)


def test_instance__owned_on_replica_one__other_token_refused_on_replica_two(pair: Pair) -> None:
    """Token B can neither overwrite, close nor move token A's instance through a replica
    that never heard it (403/422 naming the field); A itself may report there."""
    _a, owner = pair.token("app-a")
    _b, attacker = pair.token("app-b")
    assert pair.one.instance(owner, "x-1").status_code == 202
    for fields in ({"applied_version": 0, "host": "forged"}, {"closed": True}):
        r = pair.two.instance(attacker, "x-1", **fields)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["field"] == "instance_id"
    metrics = {
        "environment": ENV,
        "instance": {
            "instance_id": "x-1",
            "environment": ENV,
            "host": "h",
            "pid": 1,
            "applied_version": 0,
            "closed": True,
        },
    }
    assert pair.two.post("/sdk/v1/metrics", attacker, metrics).status_code == 403
    r = pair.two.instance(owner, "x-1", environment=STAGING)  # a move, refused
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "environment"
    assert pair.two.instance(owner, "x-1", applied_version=6).status_code == 202
    live = TelemetryStore(pair.store.engine).instance_tokens(["x-1"])
    assert live["x-1"] == {"token_id": _a, "token_name": "app-a"}


def test_instances__cap_counted_in_the_database__429_on_the_other_replica(pair: Pair) -> None:
    """A token's live instances are counted across replicas: its fourth instance is
    refused by a replica that holds only one of them in memory."""
    _id, token = pair.token("app-cap")
    assert pair.one.instance(token, "c-0").status_code == 202
    assert pair.one.instance(token, "c-1").status_code == 202
    assert pair.two.instance(token, "c-2").status_code == 202
    r = pair.two.instance(token, "c-3")
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "too_many_instances"


def test_guard_rollback__counters_via_replica_two__reason_names_their_token(
    pair: Pair,
) -> None:
    """The reproduced breach (``errors: 1000``) sent through replica two rolls the plan
    back; a scheduler that heard no report names the forging instance and token."""
    flag = "checkout.replicas"
    pair.store.create_flag(flag, actor="test")
    plans = PlanStore(pair.store)
    spec = {
        "environment": ENV,
        "stages": [{"rollout": 5, "enabled": True, "hold": "1h"}, {"rollout": 100}],
        "guards": [{"metric": f"{flag}.error_rate", "max": 0.01}],
    }
    plan = plans.create(flag, parse_plan(spec), actor="alice")
    scheduler = PlanScheduler(plans, TelemetryStore(pair.store.engine))
    scheduler.tick()  # stage 0 applied: the guard's window starts now
    _h, honest = pair.token("honest-app")
    forger_id, forger = pair.token("leaked-app")

    def metrics(replica: Replica, token: str, instance_id: str, **counters: int) -> None:
        body = {
            "environment": ENV,
            "instance": {
                "instance_id": instance_id,
                "environment": ENV,
                "host": "h",
                "pid": 1,
                "applied_version": 1,
            },
            "counters": {flag: counters},
        }
        r = replica.post("/sdk/v1/metrics", token, body)
        assert r.status_code == 202, r.text

    metrics(pair.one, honest, "g-honest", reads=100, errors=0)
    metrics(pair.two, forger, "g-forged", reads=1, errors=1000)
    (after, _step), *_ = scheduler.tick()
    assert after.id == plan.id and after.status is PlanStatus.ROLLED_BACK
    reason = after.reason or ""
    assert f"errors reported by instance g-forged of token leaked-app ({forger_id}): 1000" in (
        reason
    )
    assert "honest-app" not in reason and "g-honest" not in reason


def test_kill_wait__lagging_instance__names_its_token(pair: Pair) -> None:
    """``kill?wait=`` on replica two lists an instance heard by replica one as lagging,
    with the token that owns it."""
    flag = "search.replicas"
    pair.store.create_flag(flag, actor="test")
    pair.store.update_state(flag, ENV, StateChange(enabled=True, rollout=100), actor="test")
    owner_id, owner = pair.token("slow-app")
    _admin, admin = pair.token("ops", "admin")
    assert pair.one.instance(owner, "k-1", applied_version=0).status_code == 202
    r = httpx.post(
        f"{pair.two.base_url}/admin/flags/{flag}/kill",
        params={"wait": "500ms"},
        json={"reason": "drill", "environments": [ENV]},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    lagging = {i["instance_id"]: i for i in r.json()["lagging"]}
    assert lagging["k-1"]["token_id"] == owner_id
    assert lagging["k-1"]["token_name"] == "slow-app"


def test_instance__unowned_pre_0008_row__claimed_by_the_first_token_to_report(
    pair: Pair,
) -> None:
    """A row written before ``0008`` has no owner: the first token that reports the
    instance after the upgrade claims it, and then it is that token's on every replica."""
    with pair.store.engine.begin() as conn:
        conn.execute(
            sdk_instances.insert().values(
                instance_id="legacy-1",
                environment=ENV,
                host="old",
                pid=1,
                applied_version=1,
                report_interval=10.0,
                closed=False,
                last_seen_at=datetime.now(UTC),
                token_id=None,
            )
        )
    first_id, first = pair.token("upgraded-app")
    _other, other = pair.token("other-app")
    assert pair.two.instance(first, "legacy-1").status_code == 202
    assert pair.one.instance(other, "legacy-1").status_code == 403
    assert pair.two.instance(other, "legacy-1").status_code == 403
    owners = TelemetryStore(pair.store.engine).instance_tokens(["legacy-1"])
    assert owners["legacy-1"]["token_id"] == first_id
