"""Issue #14, finding 6: the token an automated kill switch holds may kill, nothing else.

Through a real server: a ``guard`` token (``flagrail token create --role guard --env
production --flags 'auth.cache.*'``) kills matching flags in its environment, and is
refused (403) for every other flag or environment, unkill, state changes, plans and
reads. Flag patterns are validated (422 naming ``flags``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from security.admin_server import AdminServer, error_field

FLAGRAIL = str(Path(sys.executable).with_name("flagrail"))
GUARDED = "auth.cache.l2"
OTHER = "checkout.v2"


@pytest.fixture
def server(sqlite_url: str) -> Iterator[AdminServer]:
    with AdminServer(sqlite_url) as running:
        running.flag(GUARDED)
        running.flag(OTHER)
        yield running


@pytest.fixture
def guard(server: AdminServer) -> str:
    """A guard token made as the issue spells it, by the real CLI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGRAIL_")}
    env["FLAGRAIL_DATABASE_URL"] = server.database_url
    args = ["--name", "auth-guard", "--role", "guard", "--env", "production"]
    done = subprocess.run(
        [FLAGRAIL, "token", "create", *args, "--flags", "auth.cache.*"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _kill(server: AdminServer, token: str, key: str, envs: list[str] | None = None) -> int:
    body: dict[str, object] = {"reason": "breach"}
    if envs is not None:
        body["environments"] = envs
    return server.request("POST", f"/admin/flags/{key}/kill", token, json=body).status_code


def test_guard__matching_flag_in_its_environment__killed(server: AdminServer, guard: str) -> None:
    """The one thing a guard may do."""
    assert _kill(server, guard, GUARDED) == 200
    state = server.store.get_flag(GUARDED).states
    assert state["production"].killed and not state["staging"].killed


def test_guard__anything_else__403(server: AdminServer, guard: str) -> None:
    """Another flag, another environment, unkill, set, plans, reads: all refused."""
    server.store.kill(GUARDED, ["production"], reason="r", actor="test")
    attempts = {
        "other flag": ("POST", f"/admin/flags/{OTHER}/kill", {"reason": "r"}),
        "other env": (
            "POST",
            f"/admin/flags/{GUARDED}/kill",
            {"reason": "r", "environments": ["staging"]},
        ),
        "unkill": ("POST", f"/admin/flags/{GUARDED}/unkill", {"reason": "r"}),
        "set": ("PATCH", f"/admin/flags/{GUARDED}/environments/production", {"rollout": 0}),
        "plan": (
            "POST",
            f"/admin/flags/{GUARDED}/plans",
            {"environment": "production", "stages": [{"rollout": 10, "hold": "1m"}]},
        ),
        "read flags": ("GET", "/admin/flags", None),
        "read flag": ("GET", f"/admin/flags/{GUARDED}", None),
        "history": ("GET", "/admin/history", None),
        "tokens": ("GET", "/admin/tokens", None),
        "metrics": ("GET", "/metrics", None),
    }
    statuses = {
        name: server.request(method, path, guard, json=body).status_code
        for name, (method, path, body) in attempts.items()
    }
    assert statuses == dict.fromkeys(attempts, 403)
    states = server.store.get_flag(GUARDED).states
    assert states["production"].killed and not states["staging"].killed
    assert not any(s.killed for s in server.store.get_flag(OTHER).states.values())


def test_guard__listed_with_its_patterns(server: AdminServer, guard: str) -> None:
    """The token list shows the role and the patterns stored with the token."""
    response = server.request("GET", "/admin/tokens", server.admin)
    (row,) = [t for t in response.json()["items"] if t["name"] == "auth-guard"]
    assert (row["role"], row["environments"], row["flags"]) == (
        "guard",
        ["production"],
        ["auth.cache.*"],
    )


@pytest.mark.parametrize(
    "flags",
    [[], "auth.*", ["Auth.*"], ["a b"], ["x" * 101], ["auth.[cache"], [1], ["a"] * 51],
)
def test_token_create__bad_flag_patterns__422_naming_flags(
    server: AdminServer, flags: object
) -> None:
    """Patterns are a list of 1 to 50 fnmatch patterns over flag-key characters."""
    response = server.request(
        "POST",
        "/admin/tokens",
        server.admin,
        json={"name": "g", "role": "guard", "flags": flags},
    )
    assert response.status_code == 422, response.text
    assert (error_field(response) or "").split(".")[0] == "flags"


def test_token_create__pattern_admin__cannot_widen(server: AdminServer) -> None:
    """An admin limited to patterns hands out only tokens within the same patterns."""
    limited = server.token("auth-admin", "admin", flags=["auth.*"])
    wide = server.request(
        "POST", "/admin/tokens", limited, json={"name": "g", "role": "guard", "flags": ["*"]}
    )
    none = server.request("POST", "/admin/tokens", limited, json={"name": "g", "role": "guard"})
    assert (wide.status_code, none.status_code) == (403, 403)
    assert error_field(wide) == "flags"
