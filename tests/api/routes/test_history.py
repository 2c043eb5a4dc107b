"""``GET /admin/history`` and ``GET /admin/flags/{key}/history``: newest first, cursor
pagination, filters, environment scope, and no way to change it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from flags.model import StateChange


def make_changes(api: Any, count: int) -> None:
    """``count`` state changes of flag a.b in beta (plus its creation row)."""
    api.store.create_flag("a.b", actor="seed")
    for i in range(count):
        api.store.update_state("a.b", "beta", StateChange(rollout=i + 1), actor="seed")


def page(api: Any, path: str, **kwargs: Any) -> dict[str, Any]:
    response = api.get(path, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_history__pages__newest_first_without_gaps_or_repeats(api: Any) -> None:
    """Following next_cursor walks every row once, newest first, then next_cursor is null."""
    make_changes(api, 11)
    all_rows = page(api, "/admin/history?flag=a.b&limit=500")["items"]
    assert len(all_rows) == 12
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        query = "/admin/history?flag=a.b&limit=5" + (f"&cursor={cursor}" if cursor else "")
        body = page(api, query)
        assert set(body) == {"items", "next_cursor"}
        assert len(body["items"]) <= 5
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [row["id"] for row in all_rows]
    assert seen == sorted(seen, reverse=True)
    assert [row["action"] for row in all_rows][-1] == "flag.create"


def test_history__row__has_every_field(api: Any) -> None:
    """A row carries id, at (UTC), actor, action, flag, environment, before, after, reason,
    request_id, the token and claimed actor, and the environment version."""
    api.create_flag("a.b")
    api.patch(
        "/admin/flags/a.b/environments/beta",
        json={"enabled": True, "reason": "try it"},
        headers={"X-Request-ID": "req-42"},
    )
    row = page(api, "/admin/history?limit=1")["items"][0]
    assert set(row) == {
        "id",
        "at",
        "actor",
        "action",
        "flag",
        "environment",
        "before",
        "after",
        "reason",
        "request_id",
        "token_id",
        "token_name",
        "claimed_actor",
        "env_version",
    }
    assert (row["actor"], row["action"], row["flag"], row["environment"]) == (
        "admin",
        "state.update",
        "a.b",
        "beta",
    )
    assert (row["before"]["enabled"], row["after"]["enabled"]) == (False, True)
    assert (row["reason"], row["request_id"]) == ("try it", "req-42")
    assert datetime.fromisoformat(row["at"]).utcoffset() == timedelta(0)


def test_history__state_rows__carry_the_environment_version_they_made(api: Any) -> None:
    """A state update, a kill and an unkill each record, per environment, the version the
    environments table holds right after it (the version an SDK reports once it has
    applied the change); a flag-level row records none."""
    api.create_flag("a.b")
    envs = [e.name for e in api.store.list_environments()]
    assert len(envs) > 1
    response = api.patch("/admin/flags/a.b/environments/beta", json={"enabled": True})
    assert response.status_code == 200, response.text
    after_patch = api.store.environment_version("beta")
    expected: dict[tuple[str, str | None], int | None] = {("state.update", "beta"): after_patch}
    for action in ("kill", "unkill"):
        response = api.post(f"/admin/flags/a.b/{action}", json={"reason": "drill"})
        assert response.status_code == 200, response.text
        for env in envs:
            expected[(action, env)] = api.store.environment_version(env)
    expected[("flag.create", None)] = None
    rows = page(api, "/admin/history?flag=a.b&limit=500")["items"]
    recorded = {(row["action"], row["environment"]): row["env_version"] for row in rows}
    assert recorded == expected
    assert expected[("kill", "beta")] == after_patch + 1


def test_history__filters__flag_environment_actor_action(api: Any) -> None:
    """Each filter keeps only matching rows; the per-flag route filters by its flag."""
    api.create_flag("a.b")
    api.create_flag("c.d")
    operator = api.token("operator")
    api.patch("/admin/flags/a.b/environments/beta", json={"enabled": True})
    api.post("/admin/flags/c.d/kill", json={"reason": "r", "environments": ["production"]})
    api.post("/admin/flags/a.b/kill", json={"reason": "r"}, token=operator)

    def rows(query: str) -> list[tuple[Any, ...]]:
        items = page(api, f"/admin/history?limit=500&{query}")["items"]
        return [(i["action"], i["flag"], i["environment"], i["actor"]) for i in items]

    assert {r[1] for r in rows("flag=c.d")} == {"c.d"}
    assert rows("environment=production") == [
        ("kill", "a.b", "production", "operator"),
        ("kill", "c.d", "production", "admin"),
    ]
    assert {r[3] for r in rows("actor=operator")} == {"operator"}
    assert len(rows("actor=operator")) == 4
    assert rows("action=state.update") == [("state.update", "a.b", "beta", "admin")]
    assert rows("action=kill&flag=c.d") == [("kill", "c.d", "production", "admin")]
    per_flag = page(api, "/admin/flags/c.d/history?limit=500")["items"]
    assert [(i["action"], i["flag"]) for i in per_flag] == [("kill", "c.d"), ("flag.create", "c.d")]
    assert page(api, "/admin/flags/c.d/history?action=flag.create")["items"][0]["flag"] == "c.d"


def test_history__since_until__any_utc_offset(api: Any) -> None:
    """since/until take ISO times in any offset (and durations) and compare instants."""
    make_changes(api, 1)
    at = datetime.fromisoformat(page(api, "/admin/history")["items"][0]["at"])
    minute = timedelta(minutes=1)
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))

    def count(name: str, instant: datetime) -> int:
        value = instant.isoformat().replace("+", "%2B")
        return len(page(api, f"/admin/history?flag=a.b&{name}={value}")["items"])

    assert count("since", (at - minute).astimezone(west)) == 2
    assert count("since", (at + minute).astimezone(west)) == 0
    assert count("since", (at + minute).astimezone(east)) == 0
    assert count("until", (at - minute).astimezone(east)) == 0
    assert count("until", (at + minute).astimezone(UTC)) == 2
    assert len(page(api, "/admin/history?flag=a.b&since=1h")["items"]) == 2
    assert len(page(api, "/admin/history?flag=a.b&until=1h")["items"]) == 0


def test_flag_history__unknown_flag__404(api: Any) -> None:
    """The per-flag history of an unknown flag answers 404."""
    response = api.get("/admin/flags/no.such/history")
    assert response.status_code == 404
    assert api.error(response)["code"] == "flag_not_found"


def test_history__scoped_reader__sees_its_environments_and_flag_level_rows(api: Any) -> None:
    """A reader scoped to beta sees beta rows and flag-level rows, never production rows;
    asking for production is 403."""
    api.create_flag("a.b")
    api.patch("/admin/flags/a.b/environments/beta", json={"enabled": True})
    api.patch("/admin/flags/a.b/environments/production", json={"enabled": True})
    reader = api.token("reader", ["beta"])
    items = page(api, "/admin/history?limit=500", token=reader)["items"]
    assert {i["environment"] for i in items} <= {"beta", None}
    assert ("state.update", "beta") in {(i["action"], i["environment"]) for i in items}
    assert ("flag.create", None) in {(i["action"], i["environment"]) for i in items}
    per_flag = page(api, "/admin/flags/a.b/history", token=reader)["items"]
    assert {i["environment"] for i in per_flag} <= {"beta", None}
    forbidden = api.get("/admin/history?environment=production", token=reader)
    assert forbidden.status_code == 403
    assert api.error(forbidden)["field"] == "environment"


def test_history__write_methods__not_allowed(api: Any) -> None:
    """Nothing in the API changes or deletes history: write methods answer 405."""
    make_changes(api, 1)
    rows = page(api, "/admin/history")["items"]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = api.request(method, "/admin/history", json={})
        assert response.status_code == 405, method
        assert api.error(response)["code"] == "method_not_allowed"
    assert page(api, "/admin/history")["items"] == rows


def test_history__token_rows__shown_to_admins_only(api: Any) -> None:
    """Token changes name other tokens, their roles and scopes: an admin sees them, an
    editor or reader does not, not even by asking for the action."""
    api.token("operator", ["beta"])
    admin_actions = {i["action"] for i in page(api, "/admin/history?limit=500")["items"]}
    assert "token.create" in admin_actions
    for role in ("reader", "editor"):
        token = api.token(role, None)
        items = page(api, "/admin/history?limit=500", token=token)["items"]
        assert "token.create" not in {i["action"] for i in items}
        asked = page(api, "/admin/history?action=token.create", token=token)["items"]
        assert asked == []
