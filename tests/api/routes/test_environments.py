"""``/admin/environments``: the four defaults, creating more, and scope."""

from __future__ import annotations

from typing import Any


def test_list_environments__fresh_database__four_defaults(api: Any) -> None:
    """The first migration creates development, staging, beta and production."""
    response = api.get("/admin/environments")
    assert response.status_code == 200
    items = response.json()["items"]
    assert sorted(e["name"] for e in items) == ["beta", "development", "production", "staging"]
    assert all(set(e) == {"name", "created_at", "version"} for e in items)


def test_create_environment__valid__201_and_flags_get_a_state(api: Any) -> None:
    """A new environment answers 201; existing flags are off in it; history records it."""
    api.create_flag("a.b")
    response = api.post("/admin/environments", json={"name": "eu-west"})
    assert response.status_code == 201
    assert response.json()["name"] == "eu-west"
    state = api.get("/admin/flags/a.b").json()["environments"]["eu-west"]
    assert (state["enabled"], state["version"]) == (False, 0)
    history = api.get("/admin/history?action=environment.create").json()["items"]
    assert [(h["environment"], h["actor"]) for h in history] == [("eu-west", "admin")]
    assert (
        api.patch("/admin/flags/a.b/environments/eu-west", json={"enabled": True}).status_code
        == 200
    )


def test_create_environment__existing__409(api: Any) -> None:
    """An existing name answers 409 naming the field."""
    response = api.post("/admin/environments", json={"name": "beta"})
    assert response.status_code == 409
    assert api.error(response)["field"] == "name"


def test_environments__scoped_tokens__see_their_own_and_cannot_create(api: Any) -> None:
    """A scoped reader lists its environments only; a scoped admin cannot create one."""
    reader = api.token("reader", ["beta", "staging"])
    names = [e["name"] for e in api.get("/admin/environments", token=reader).json()["items"]]
    assert names == ["beta", "staging"]
    admin = api.token("admin", ["beta"])
    assert api.post("/admin/environments", json={"name": "qa"}, token=admin).status_code == 403
