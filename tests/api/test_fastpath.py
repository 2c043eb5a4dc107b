"""``GET /sdk/v1/snapshot`` answered from memory (``api.fastpath``) says exactly what the
route says, and never an older state than the request asks for.

Each case is sent twice to one app, with the fast path on and off: the status, body
and headers (but the request id) must be the same, and the fast path must have
answered the cases it exists for rather than passed them on.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from flags.store.sql import SqlFlagStore

ENV = "production"
Api = Any  # tests/api/conftest.py's Api (the ``api`` fixture)


def _answer(api: Api, *, fast: bool, **kwargs: Any) -> tuple[httpx.Response, bool]:
    stats = api.client.app.state.fastpath  # type: ignore[attr-defined]
    stats.enabled = fast
    before = stats.answered
    try:
        response = api.get("/sdk/v1/snapshot", **kwargs)
    finally:
        stats.enabled = True
    return response, stats.answered > before


def _same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (a.text, b.text)
    assert a.content == b.content
    drop = {"x-request-id"}
    assert {k: v for k, v in a.headers.items() if k not in drop} == {
        k: v for k, v in b.headers.items() if k not in drop
    }


@pytest.fixture
def sdk(api: Api) -> dict[str, Any]:
    api.create_flag("checkout")
    if ENV not in {e.name for e in api.store.list_environments()}:
        api.post("/admin/environments", json={"name": ENV})
    client = api.token("client", [ENV])
    staging_only = api.token("client", ["staging"])
    first = api.get("/sdk/v1/snapshot", token=client, params={"environment": ENV})
    assert first.status_code == 200, first.text
    return {"client": client, "staging": staging_only, "etag": first.headers["etag"]}


CASES: dict[str, tuple[dict[str, Any], bool]] = {
    # name: (request, answered from memory)
    "current etag: 304": ({"etag": "current"}, True),
    "no etag: 200": ({}, True),
    "old etag: 200": ({"etag": '"1"'}, True),
    "etag star: 304": ({"etag": "*"}, True),
    "etag list: 304": ({"etag": 'W/"x", current'}, True),
    "min_version known: 304": ({"etag": "current", "min_version": "1"}, True),
    "min_version ahead: from the database": ({"etag": "current", "min_version": "999"}, True),
    "another env's token: 403": ({"token": "staging"}, False),
    "no token: 401": ({"token": ""}, False),
    "unknown token: 401": ({"token": "not-a-token"}, False),
    "basic scheme: 401": ({"authorization": "Basic eDp5"}, False),
    "bad env name: 422": ({"env": "Bad Env"}, False),
    "env too long: 422": ({"env": "e" * 41}, False),
    "unknown env: 404": ({"env": "nowhere", "token": "admin"}, False),
    "negative min_version: 422": ({"min_version": "-1"}, False),
    "min_version not a number: 422": ({"min_version": "x"}, False),
    "min_version too big: 422": ({"min_version": str(2**63)}, False),
    "if-none-match too long: 422": ({"etag": "x" * 201}, False),
    "unknown parameter": ({"extra": "1"}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fastpath__any_request__same_answer_as_the_route(
    api: Api, sdk: dict[str, Any], case: str
) -> None:
    spec, fast = CASES[case]
    token = {"staging": sdk["staging"], "admin": api.admin, "": ""}.get(
        spec.get("token", "client"), spec.get("token", sdk["client"])
    )
    if spec.get("token", "client") == "client":
        token = sdk["client"]
    params = {"environment": spec.get("env", ENV)}
    if "min_version" in spec:
        params["min_version"] = spec["min_version"]
    if "extra" in spec:
        params["extra"] = spec["extra"]
    headers = {}
    if "etag" in spec:
        headers["If-None-Match"] = spec["etag"].replace("current", sdk["etag"])
    if "authorization" in spec:
        headers["Authorization"] = spec["authorization"]
        token = ""
    kwargs = {"token": token, "params": params, "headers": headers}
    route, _ = _answer(api, fast=False, **kwargs)
    mem, answered = _answer(api, fast=True, **kwargs)
    _same(mem, route)
    assert answered is fast
    assert mem.status_code < 500


def test_fastpath__change_made_elsewhere__min_version_reads_the_database(
    api: Api, sdk: dict[str, Any], database_url: str
) -> None:
    """A change committed by another process is not known to this replica's memory
    until its poll (or Redis) brings it: a plain poll may still get a 304 meanwhile,
    but a fetch naming the version a hint announced gets the new state at once."""
    before = int(sdk["etag"].strip('"'))
    other = SqlFlagStore(database_url)  # another engine: no listener of this app's
    try:
        other.kill("checkout", [ENV], reason="elsewhere", actor="test")
    finally:
        other.close()
    params = {"environment": ENV, "min_version": str(before + 1)}
    r = api.get("/sdk/v1/snapshot", token=sdk["client"], params=params,
                headers={"If-None-Match": sdk["etag"]})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["version"] == before + 1
    assert r.json()["flags"]["checkout"]["killed"] is True
    # and the replica's own poll catches up: a plain poll then gets it too
    deadline = time.monotonic() + 10
    while True:
        plain = api.get("/sdk/v1/snapshot", token=sdk["client"], params={"environment": ENV},
                        headers={"If-None-Match": sdk["etag"]})  # fmt: skip
        if plain.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert plain.status_code == 200 and plain.json()["version"] == before + 1


def test_fastpath__change_through_this_replica__next_poll_has_it(
    api: Api, sdk: dict[str, Any]
) -> None:
    killed = api.post("/admin/flags/checkout/kill", json={"reason": "t", "environments": [ENV]})
    assert killed.status_code == 200, killed.text
    r, answered = _answer(
        api, fast=True, token=sdk["client"], params={"environment": ENV},
        headers={"If-None-Match": sdk["etag"]},
    )  # fmt: skip
    assert answered and r.status_code == 200
    assert r.json()["flags"]["checkout"]["killed"] is True
    assert r.headers["etag"] == f'"{r.json()["version"]}"'


def test_fastpath__token_revoked__next_poll_refused(api: Api, sdk: dict[str, Any]) -> None:
    ok, answered = _answer(api, fast=True, token=sdk["client"], params={"environment": ENV})
    assert ok.status_code == 200 and answered
    tokens = api.get("/admin/tokens").json()["items"]
    token_id = next(t["id"] for t in tokens if t["name"] == f"client@{ENV}")
    assert api.delete(f"/admin/tokens/{token_id}").status_code in (200, 204)
    refused, answered = _answer(api, fast=True, token=sdk["client"], params={"environment": ENV})
    assert refused.status_code == 401 and not answered


# ------------------------------------------------------------- instance reports
def _report(**fields: Any) -> dict[str, Any]:
    body = {"instance_id": "i-1", "environment": ENV, "host": "h", "pid": 1,
            "applied_version": 3, "interval": 10}  # fmt: skip
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


INSTANCE_CASES: dict[str, tuple[dict[str, Any], bool]] = {
    # name: (request, recorded from memory)
    "a known instance reports again: 202": ({}, True),
    "float interval: 202": ({"json": _report(interval=2.5)}, True),
    "closed: 202": ({"json": _report(closed=True, applied_version=4)}, True),
    "content type with charset: 202": (
        {"content": json.dumps(_report()), "type": "application/json; charset=utf-8"},
        True,
    ),
    "unknown field: 422": ({"json": _report(extra=1)}, False),
    "negative pid: 422": ({"json": _report(pid=-1)}, False),
    "version too big: 422": ({"json": _report(applied_version=2**63)}, False),
    "version a string: 422": ({"json": _report(applied_version="3")}, False),
    "not JSON: 422": ({"content": "{nope", "type": "application/json"}, False),
    "text body": ({"content": json.dumps(_report()), "type": "text/plain"}, False),
    "another env's token: 403": ({"token": "staging"}, False),
    "another environment, another token: 403": (
        {"json": _report(environment="staging"), "token": "admin"},
        False,
    ),
    "another token's instance: 403": ({"token": "other"}, False),
    "no token: 401": ({"token": ""}, False),
}


@pytest.mark.parametrize("case", list(INSTANCE_CASES))
def test_fastpath__instance_report__same_answer_as_the_route(
    api: Api, sdk: dict[str, Any], case: str
) -> None:
    spec, fast = INSTANCE_CASES[case]
    other = api.token("client", [ENV])
    tokens = {"client": sdk["client"], "staging": sdk["staging"], "admin": api.admin,
              "other": other, "": ""}  # fmt: skip
    token = tokens[spec.get("token", "client")]
    first = api.post("/sdk/v1/instances", token=sdk["client"], json=_report())
    assert first.status_code == 202, first.text  # the instance is now owned and cached
    kwargs: dict[str, Any] = {"token": token}
    if "content" in spec:
        kwargs["content"] = spec["content"]
        kwargs["headers"] = {"Content-Type": spec["type"]}
    else:
        kwargs["json"] = spec.get("json", _report())
    answers = []
    for enabled in (False, True):
        stats = api.client.app.state.fastpath
        stats.enabled = enabled
        before = stats.answered
        try:
            answers.append((api.post("/sdk/v1/instances", **kwargs), stats.answered > before))
        finally:
            stats.enabled = True
    (route, _), (mem, answered) = answers
    _same(mem, route)
    assert answered is fast
    assert mem.status_code < 500


def test_fastpath__instance_report__recorded_for_kill_confirmation(
    api: Api, sdk: dict[str, Any]
) -> None:
    """A report answered from memory is what ``kill?wait=`` and the clients list see."""
    assert api.post("/sdk/v1/instances", token=sdk["client"], json=_report()).status_code == 202
    stats = api.client.app.state.fastpath
    before = stats.answered
    r = api.post("/sdk/v1/instances", token=sdk["client"], json=_report(applied_version=42))
    assert r.status_code == 202 and stats.answered == before + 1
    clients = api.get(f"/admin/environments/{ENV}/clients").json()["items"]
    assert [c["applied_version"] for c in clients if c["instance_id"] == "i-1"] == [42]
