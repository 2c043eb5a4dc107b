"""Bad input on every route answers a 4xx in the one error shape, naming the field; an
oversized body is 413; a database that does not answer is 503. Never a 500."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from flags.testing.redis_server import free_port

FLAG = "/admin/flags/a.b"
STATE = f"{FLAG}/environments/beta"
TOO_MANY = [f"t{i}" for i in range(10_001)]
NEGATIVE_CURSOR = base64.urlsafe_b64encode(b"h:-1").decode().rstrip("=")

# route -> [(description, method, path, json body or None, headers, status, field)]
Case = tuple[str, str, str, Any, dict[str, str], int, str | None]
CASES: dict[str, list[Case]] = {
    "POST /admin/environments": [
        ("name wrong type", "POST", "/admin/environments", {"name": 5}, {}, 422, "name"),
        ("name bad", "POST", "/admin/environments", {"name": "Bad Env"}, {}, 422, "name"),
        ("name missing", "POST", "/admin/environments", {}, {}, 422, "name"),
        ("unknown field", "POST", "/admin/environments", {"name": "qa", "x": 1}, {}, 422, "x"),
        ("body is a list", "POST", "/admin/environments", [], {}, 422, "body"),
    ],
    "GET /admin/flags": [
        ("archived not bool", "GET", "/admin/flags?archived=maybe", None, {}, 422, "archived"),
        ("kind too long", "GET", "/admin/flags?kind=" + "k" * 21, None, {}, 422, "kind"),
        ("q too long", "GET", "/admin/flags?q=" + "q" * 201, None, {}, 422, "q"),
        ("NUL in q", "GET", "/admin/flags?q=a%00", None, {}, 422, "q"),
        ("NUL in tag", "GET", "/admin/flags?tag=%00", None, {}, 422, "tag"),
    ],
    "POST /admin/flags": [
        ("key bad", "POST", "/admin/flags", {"key": "Auth.Cache"}, {}, 422, "key"),
        ("key wrong type", "POST", "/admin/flags", {"key": 7}, {}, 422, "key"),
        ("key missing", "POST", "/admin/flags", {"description": "d"}, {}, 422, "key"),
        ("key too long", "POST", "/admin/flags", {"key": "a" * 101}, {}, 422, "key"),
        ("kind unknown", "POST", "/admin/flags", {"key": "x.y", "kind": "nope"}, {}, 422, "kind"),
        ("tags not list", "POST", "/admin/flags", {"key": "x.y", "tags": "t"}, {}, 422, "tags"),
        ("owner wrong type", "POST", "/admin/flags", {"key": "x.y", "owner": 1}, {}, 422, "owner"),
        ("unknown field", "POST", "/admin/flags", {"key": "x.y", "on": True}, {}, 422, "on"),
        (
            "NUL in owner",
            "POST",
            "/admin/flags",
            {"key": "x.y", "owner": "a\x00"},
            {},
            422,
            "owner",
        ),
        ("NUL in a tag", "POST", "/admin/flags", {"key": "x.y", "tags": ["\x00"]}, {}, 422, "tags"),
    ],
    "GET /admin/flags/{key}": [
        ("key bad", "GET", "/admin/flags/Bad!", None, {}, 422, "key"),
        ("key too long", "GET", "/admin/flags/" + "a" * 101, None, {}, 422, "key"),
    ],
    "PATCH /admin/flags/{key}": [
        ("key bad", "PATCH", "/admin/flags/Bad", {"owner": "x"}, {}, 422, "key"),
        ("description type", "PATCH", FLAG, {"description": 5}, {}, 422, "description"),
        ("kind unknown", "PATCH", FLAG, {"kind": "nope"}, {}, 422, "kind"),
        ("archived not patchable", "PATCH", FLAG, {"archived": True}, {}, 422, "archived"),
        ("key not patchable", "PATCH", FLAG, {"key": "c.d"}, {}, 422, "key"),
    ],
    "DELETE /admin/flags/{key}": [
        ("key bad", "DELETE", "/admin/flags/BAD", None, {}, 422, "key"),
    ],
    "PATCH /admin/flags/{key}/environments/{env}": [
        ("rollout over 100", "PATCH", STATE, {"rollout": 101}, {}, 422, "rollout"),
        ("rollout negative", "PATCH", STATE, {"rollout": -1}, {}, 422, "rollout"),
        ("rollout a string", "PATCH", STATE, {"rollout": "50"}, {}, 422, "rollout"),
        ("rollout a float", "PATCH", STATE, {"rollout": 50.5}, {}, 422, "rollout"),
        ("enabled a string", "PATCH", STATE, {"enabled": "yes"}, {}, 422, "enabled"),
        ("enabled a number", "PATCH", STATE, {"enabled": 1}, {}, 422, "enabled"),
        ("tenants not a list", "PATCH", STATE, {"tenants_on": "acme"}, {}, 422, "tenants_on"),
        ("tenant empty", "PATCH", STATE, {"tenants_off": [""]}, {}, 422, "tenants_off"),
        ("tenant too long", "PATCH", STATE, {"tenants_on": ["x" * 201]}, {}, 422, "tenants_on"),
        ("tenant control", "PATCH", STATE, {"tenants_on": ["a\x00b"]}, {}, 422, "tenants_on"),
        ("tenant a number", "PATCH", STATE, {"tenants_on_add": [1]}, {}, 422, "tenants_on_add"),
        ("over 10,000 tenants", "PATCH", STATE, {"tenants_on": TOO_MANY}, {}, 422, "tenants_on"),
        ("over 10,000 added", "PATCH", STATE, {"tenants_off_add": TOO_MANY}, {}, 422, None),
        ("unknown field", "PATCH", STATE, {"version": 3}, {}, 422, "version"),
        ("NUL in reason", "PATCH", STATE, {"enabled": True, "reason": "\x00"}, {}, 422, "reason"),
        ("env bad", "PATCH", f"{FLAG}/environments/PROD", {"enabled": True}, {}, 422, None),
        ("key bad", "PATCH", "/admin/flags/A/environments/beta", {"enabled": True}, {}, 422, "key"),
        ("If-Match junk", "PATCH", STATE, {"enabled": True}, {"If-Match": "abc"}, 422, "If-Match"),
        ("If-Match negative", "PATCH", STATE, {"enabled": True}, {"If-Match": '"-1"'}, 422, None),
        ("env unknown", "PATCH", f"{FLAG}/environments/qa", {"enabled": True}, {}, 404, None),
        (
            "flag unknown",
            "PATCH",
            "/admin/flags/x.y/environments/beta",
            {"enabled": True},
            {},
            404,
            "key",
        ),
    ],
    "POST /admin/flags/{key}/kill": [
        ("reason missing", "POST", f"{FLAG}/kill", {}, {}, 422, "reason"),
        ("reason empty", "POST", f"{FLAG}/kill", {"reason": ""}, {}, 422, "reason"),
        ("reason blank", "POST", f"{FLAG}/kill", {"reason": "   "}, {}, 422, "reason"),
        ("reason a number", "POST", f"{FLAG}/kill", {"reason": 5}, {}, 422, "reason"),
        ("reason too long", "POST", f"{FLAG}/kill", {"reason": "r" * 2001}, {}, 422, "reason"),
        ("NUL in reason", "POST", f"{FLAG}/kill", {"reason": "a\x00b"}, {}, 422, "reason"),
        (
            "envs not list",
            "POST",
            f"{FLAG}/kill",
            {"reason": "r", "environments": "beta"},
            {},
            422,
            "environments",
        ),
        (
            "env name bad",
            "POST",
            f"{FLAG}/kill",
            {"reason": "r", "environments": ["B!"]},
            {},
            422,
            "environments",
        ),
        ("unknown field", "POST", f"{FLAG}/kill", {"reason": "r", "env": ["beta"]}, {}, 422, "env"),
        ("key bad", "POST", "/admin/flags/NO/kill", {"reason": "r"}, {}, 422, "key"),
        ("flag unknown", "POST", "/admin/flags/x.y/kill", {"reason": "r"}, {}, 404, "key"),
    ],
    "POST /admin/flags/{key}/unkill": [
        ("reason missing", "POST", f"{FLAG}/unkill", {"environments": ["beta"]}, {}, 422, "reason"),
        ("reason empty", "POST", f"{FLAG}/unkill", {"reason": ""}, {}, 422, "reason"),
        (
            "envs wrong type",
            "POST",
            f"{FLAG}/unkill",
            {"reason": "r", "environments": [1]},
            {},
            422,
            None,
        ),
        (
            "env unknown",
            "POST",
            f"{FLAG}/unkill",
            {"reason": "r", "environments": ["qa"]},
            {},
            404,
            "environments",
        ),
    ],
    "GET /admin/history": [
        ("limit over 500", "GET", "/admin/history?limit=501", None, {}, 422, "limit"),
        ("limit zero", "GET", "/admin/history?limit=0", None, {}, 422, "limit"),
        ("limit not a number", "GET", "/admin/history?limit=ten", None, {}, 422, "limit"),
        ("cursor garbage", "GET", "/admin/history?cursor=garbage", None, {}, 422, "cursor"),
        (
            "cursor negative",
            "GET",
            f"/admin/history?cursor={NEGATIVE_CURSOR}",
            None,
            {},
            422,
            "cursor",
        ),
        ("cursor too long", "GET", "/admin/history?cursor=" + "a" * 65, None, {}, 422, "cursor"),
        ("since not a time", "GET", "/admin/history?since=yesterday", None, {}, 422, "since"),
        ("until not a time", "GET", "/admin/history?until=2026-13-45", None, {}, 422, "until"),
        ("actor too long", "GET", "/admin/history?actor=" + "a" * 201, None, {}, 422, "actor"),
        ("NUL in actor", "GET", "/admin/history?actor=a%00b", None, {}, 422, "actor"),
        ("since too far back", "GET", "/admin/history?since=99999999d", None, {}, 422, "since"),
        ("until out of range", "GET", "/admin/history?until=99999999999w", None, {}, 422, "until"),
        (
            "since before year 1",
            "GET",
            "/admin/history?since=0001-01-01T00:00%2B01:00",
            None,
            {},
            422,
            "since",
        ),
    ],
    "GET /admin/flags/{key}/history": [
        ("key bad", "GET", "/admin/flags/BAD/history", None, {}, 422, "key"),
        ("limit over 500", "GET", f"{FLAG}/history?limit=1000", None, {}, 422, "limit"),
        ("cursor garbage", "GET", f"{FLAG}/history?cursor=%25%25", None, {}, 422, "cursor"),
    ],
    "POST /admin/tokens": [
        ("role unknown", "POST", "/admin/tokens", {"name": "n", "role": "root"}, {}, 422, "role"),
        ("name empty", "POST", "/admin/tokens", {"name": "", "role": "reader"}, {}, 422, "name"),
        ("name missing", "POST", "/admin/tokens", {"role": "reader"}, {}, 422, "name"),
        (
            "envs not a list",
            "POST",
            "/admin/tokens",
            {"name": "n", "role": "reader", "environments": "beta"},
            {},
            422,
            "environments",
        ),
        (
            "env name bad",
            "POST",
            "/admin/tokens",
            {"name": "n", "role": "reader", "environments": ["X"]},
            {},
            422,
            "environments",
        ),
        (
            "env unknown",
            "POST",
            "/admin/tokens",
            {"name": "n", "role": "reader", "environments": ["qa"]},
            {},
            404,
            "environments",
        ),
        (
            "unknown field",
            "POST",
            "/admin/tokens",
            {"name": "n", "role": "reader", "token": "x"},
            {},
            422,
            "token",
        ),
    ],
    "DELETE /admin/tokens/{token_id}": [
        ("id unknown", "DELETE", "/admin/tokens/nope", None, {}, 404, "id"),
        ("NUL in id", "DELETE", "/admin/tokens/a%00b", None, {}, 422, "token_id"),
    ],
    "headers": [
        (
            "actor header from a token that is not a guard's",
            "GET",
            "/admin/flags",
            None,
            {"X-Flagrail-Actor": "alice"},
            403,
            "X-Flagrail-Actor",
        ),
    ],
}


@pytest.mark.parametrize("route", list(CASES))
def test_bad_input__route__4xx_naming_the_field(api: Any, route: str) -> None:
    """Each bad request on the route gets its 4xx, the error shape, and the field named
    (``tenants_on_add.0`` names the list's first item)."""
    api.store.create_flag("a.b", actor="setup")
    wrong = []
    for description, method, path, body, headers, status, field in CASES[route]:
        response = api.request(method, path, json=body, headers=headers)
        if response.status_code != status:
            wrong.append(f"{description}: {response.status_code} {response.text[:200]}")
            continue
        error = api.error(response)
        named = error["field"] or ""
        if field is not None and named != field and not named.startswith(f"{field}."):
            wrong.append(f"{description}: field {error['field']!r}, want {field!r}")
        elif field is None and not named:
            wrong.append(f"{description}: no field named")
    assert wrong == []


def test_bad_input__not_json__422_naming_body(api: Any) -> None:
    """A body that is not JSON, or JSON of the wrong shape, is 422 for the body."""
    api.store.create_flag("a.b", actor="setup")
    for path, method in (("/admin/flags", "POST"), (STATE, "PATCH"), (f"{FLAG}/kill", "POST")):
        for content in (b"{not json", b'"a string"', b"null"):
            response = api.request(
                method, path, content=content, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 422, (path, content, response.text)
            assert api.error(response)["field"] == "body"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/admin/flags"),
        ("PATCH", STATE),
        ("POST", f"{FLAG}/kill"),
        ("POST", "/admin/tokens"),
    ],
)
def test_bad_input__body_over_one_mib__413(api: Any, method: str, path: str) -> None:
    """A body over 1 MiB is refused with 413, announced by Content-Length or streamed."""
    api.store.create_flag("a.b", actor="setup")
    big = b'{"description": "' + b"x" * (1024 * 1024) + b'"}'
    announced = api.request(method, path, content=big, headers={"Content-Type": "application/json"})

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    streamed = api.request(
        method, path, content=chunks(), headers={"Content-Type": "application/json"}
    )
    for response in (announced, streamed):
        assert response.status_code == 413
        assert api.error(response) == {
            "code": "payload_too_large",
            "message": "request body is over 1048576 bytes",
            "field": "body",
        }
    exactly = b'{"key": "ok.flag", "description": "' + b"x" * 9_000 + b'"}'
    fine = api.request(
        "POST", "/admin/flags", content=exactly, headers={"Content-Type": "application/json"}
    )
    assert fine.status_code == 201


def _unreachable_url(kind: str, tmp_path: Any) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/no-such-dir/flagrail.db"
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/flagrail"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_database_down__healthz_and_routes__503(kind: str, tmp_path: Any, app_client: Any) -> None:
    """With the database unreachable, /healthz and every admin route answer 503, not 500."""
    auth = {"Authorization": "Bearer frl_" + "x" * 43}
    with app_client(_unreachable_url(kind, tmp_path)) as client:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["error"]["code"] == "store_unavailable"
        for method, path, body in (
            ("GET", "/admin/flags", None),
            ("POST", "/admin/flags", {"key": "a.b"}),
            ("GET", "/admin/history", None),
            ("POST", "/admin/flags/a.b/kill", {"reason": "r"}),
            ("GET", "/admin/environments", None),
        ):
            response = client.request(method, path, json=body, headers=auth)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"]["code"] == "store_unavailable"
