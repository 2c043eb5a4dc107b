"""``POST /admin/flags/{key}/kill`` and ``/unkill`` through ``api.kill_fastpath`` say
exactly what the route says, and write the same state and history.

Each case is sent once with the fast path off (the route answers) and once with it on.
A case that changes state acts on a flag of its own each time (``a`` for the route,
``b`` for the fast path, set up alike), and the answers are compared with the flag's
key, ids and timestamps masked: status, body and headers (but the request id) must be
the same, and the fast path must have answered the cases it exists for and passed
the others to the route.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from flags.model import Action

ENV = "production"
Api = Any  # tests/api/conftest.py's Api (the ``api`` fixture)
MASKED = {
    "id", "created_at", "updated_at", "killed_at", "at", "expires_at", "decided_at",
    "elapsed_ms", "request_id", "history_id", "cursor", "next_cursor",
}  # fmt: skip
# Numbers that differ between the two flags of one database (each change bumps the
# environment): masked when set, so a row that lost its number still differs.
NUMBERED = {"env_version"}


def _send(api: Api, *, fast: bool, key: str, spec: dict[str, Any]) -> tuple[httpx.Response, bool]:
    stats = api.client.app.state.fastpath
    stats.enabled = fast
    before = stats.kills_answered
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    path = f"/admin/flags/{key}/{spec.get('action', 'kill')}{spec.get('query', '')}"
    content = spec.get("raw")
    if content is None:
        content = json.dumps(spec.get("body", {"reason": "t", "environments": [ENV]}))
    try:
        response = api.post(path, token=spec.get("token"), content=content, headers=headers)
    finally:
        stats.enabled = True
    return response, stats.kills_answered > before


def _masked(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {
            k: "*" if k in MASKED or (k in NUMBERED and v is not None) else _masked(v, key)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if isinstance(value, str):
        return value.replace(key, "KEY")
    return value


def _same(a: httpx.Response, key_a: str, b: httpx.Response, key_b: str) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    if a.headers.get("content-type") == "application/json":
        assert _masked(a.json(), key_a) == _masked(b.json(), key_b)
    else:
        assert a.content == b.content
    drop = {"x-request-id", "content-length"}
    assert {k: v for k, v in a.headers.items() if k not in drop} == {
        k: v for k, v in b.headers.items() if k not in drop
    }


@pytest.fixture
def tokens(api: Api) -> dict[str, str]:
    if ENV not in {e.name for e in api.store.list_environments()}:
        api.post("/admin/environments", json={"name": ENV})
    for env in ("staging", "gated"):
        api.post("/admin/environments", json={"name": env})
    put = api.request("PUT", "/admin/environments/gated/policy", json={"required_approvals": 1})
    assert put.status_code == 200, put.text
    _i, other_flags = api.store.create_token(
        "operator@other*", "operator", None, actor="test", flags=["other*"]
    )
    made = {
        "admin": api.admin,
        "operator": api.token("operator"),
        "staging operator": api.token("operator", ["staging"]),
        "reader": api.token("reader"),
        "client": api.token("client", [ENV]),
        "other flags": other_flags,
    }
    for secret in made.values():  # each token in the cache, as after its first request
        api.get("/admin/environments", token=secret)
    return made


# name: (request, changes state, answered by the fast path)
CASES: dict[str, tuple[dict[str, Any], bool, bool]] = {
    "kill in one environment": ({}, True, True),
    "kill everywhere": ({"body": {"reason": "t"}}, True, True),
    "kill by an operator": ({"token": "operator"}, True, True),
    "kill what is killed: nothing changes": ({"killed": True}, True, True),
    "unkill": ({"action": "unkill", "killed": True}, True, True),
    "unkill in a gated environment: 202": (
        {"action": "unkill", "killed": True, "body": {"reason": "t", "environments": ["gated"]}},
        True,
        True,
    ),
    "unknown flag: 404": ({"key": "nope"}, False, True),
    "unknown environment: 404": (
        {"body": {"reason": "t", "environments": ["nowhere"]}},
        False,
        True,
    ),
    "bad environment name: 422": (
        {"body": {"reason": "t", "environments": ["Bad Env"]}},
        False,
        True,
    ),
    "environment out of scope: 403": ({"token": "staging operator"}, False, True),
    "flag out of the token's patterns: 403": ({"token": "other flags"}, False, True),
    "reader: 403": ({"token": "reader"}, False, False),
    "client token: 403": ({"token": "client"}, False, False),
    "no token: 401": ({"token": ""}, False, False),
    "unknown token: 401": ({"token": "not-a-token"}, False, False),
    "empty reason: 422": ({"body": {"reason": "", "environments": [ENV]}}, False, False),
    "reason not a string: 422": ({"body": {"reason": 1}}, False, False),
    "unknown field: 422": ({"body": {"reason": "t", "why": "x"}}, False, False),
    "body a list: 422": ({"raw": "[]"}, False, False),
    "body not JSON: 422": ({"raw": "{"}, False, False),
    "empty body: 422": ({"raw": ""}, False, False),
    "content type text/plain": ({"headers": {"Content-Type": "text/plain"}}, True, False),
    "a claimed actor from an admin: 403": (
        {"headers": {"X-Flagrail-Actor": "guard:h:1"}},
        False,
        False,
    ),
    "wait parameter": ({"query": "?wait=0.1s"}, True, False),
    "break-glass unkill": (
        {"action": "unkill", "killed": True, "query": "?break_glass=true"},
        True,
        False,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_kill_fastpath__any_request__same_answer_and_state_as_the_route(
    api: Api, tokens: dict[str, str], case: str
) -> None:
    spec, changes, fast = CASES[case]
    spec = dict(spec)
    spec["token"] = tokens.get(spec.get("token", "admin"), spec.get("token"))
    if changes:
        keys = ("route-a", "fast-b")
        for key in keys:
            api.create_flag(key)
            if spec.get("killed"):
                envs = [ENV, "staging", "gated"]
                r = api.post(f"/admin/flags/{key}/kill", json={"reason": "t", "environments": envs})
                assert r.status_code == 200, r.text
    else:
        api.create_flag("checkout")
        keys = (spec.get("key", "checkout"),) * 2
    route, _ = _send(api, fast=False, key=keys[0], spec=spec)
    mem, answered = _send(api, fast=True, key=keys[1], spec=spec)
    _same(route, keys[0], mem, keys[1])
    assert answered is fast
    assert mem.status_code < 500
    if changes:  # the same state and history rows either way
        states = [api.get(f"/admin/flags/{key}").json() for key in keys]
        assert _masked(states[0], keys[0]) == _masked(states[1], keys[1])
        history = [api.get("/admin/history", params={"flag": key}).json()["items"] for key in keys]
        assert _masked(history[0], keys[0]) == _masked(history[1], keys[1])


def test_kill_fastpath__history_row__names_the_token_and_the_request_id(
    api: Api, tokens: dict[str, str]
) -> None:
    """The fast path's kill is audited as the route's is: one row naming the token's
    actor, the reason and the request's id, committed with the change."""
    api.create_flag("checkout")
    stats = api.client.app.state.fastpath
    before = stats.kills_answered
    r = api.post(
        "/admin/flags/checkout/kill",
        token=tokens["operator"],
        json={"reason": "incident 42", "environments": [ENV]},
        headers={"X-Request-ID": "req-kill-42"},
    )
    assert r.status_code == 200, r.text
    assert stats.kills_answered == before + 1
    assert r.headers["x-request-id"] == "req-kill-42"
    page = api.get("/admin/history", params={"flag": "checkout", "action": Action.KILL.value})
    assert page.status_code == 200, page.text
    rows = page.json()["items"]
    assert len(rows) == 1
    row = rows[0]
    assert row["environment"] == ENV and row["reason"] == "incident 42"
    assert row["request_id"] == "req-kill-42"
    assert row["actor"] == "operator"
    assert row["after"]["killed"] is True and row["before"]["killed"] is False
