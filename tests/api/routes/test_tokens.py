"""``/admin/tokens``: create (value shown once), list, revoke; scoped admins stay in scope."""

from __future__ import annotations

from typing import Any

from flags.history import HistoryQuery


def test_create_token__valid__201_value_once_and_it_authenticates(api: Any) -> None:
    """Create answers id, name, role, environments and the value; the value works at once."""
    response = api.post(
        "/admin/tokens", json={"name": "ci", "role": "reader", "environments": ["beta"]}
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "name", "role", "environments", "flags", "user", "token"}
    assert (body["name"], body["role"], body["environments"]) == ("ci", "reader", ["beta"])
    assert len(body["token"]) >= 43
    assert api.get("/admin/flags", token=body["token"]).status_code == 200
    listed = api.get("/admin/tokens").json()["items"]
    assert body["token"] not in str(listed)
    assert {"id", "name", "role", "environments", "flags", "user", "created_at", "revoked"} == set(
        listed[-1]
    )
    rows = api.store.list_history(HistoryQuery(action="token.create")).items
    assert body["token"] not in str([r.to_dict() for r in rows])


def test_create_token__environments_null_or_absent__all_environments(api: Any) -> None:
    """``environments`` null or absent means every environment."""
    for body in (
        {"name": "a", "role": "editor"},
        {"name": "b", "role": "editor", "environments": None},
    ):
        created = api.post("/admin/tokens", json=body).json()
        assert created["environments"] is None
        api.create_flag(f"f.{created['name']}")
        patched = api.patch(
            f"/admin/flags/f.{created['name']}/environments/production",
            json={"enabled": True},
            token=created["token"],
        )
        assert patched.status_code == 200


def test_revoke_token__then_use__401_and_history(api: Any) -> None:
    """A revoked token answers 401 from then on; the revoke is in the history."""
    created = api.post("/admin/tokens", json={"name": "ci", "role": "admin"}).json()
    response = api.delete(f"/admin/tokens/{created['id']}")
    assert response.status_code == 200
    assert response.json()["revoked"] is True
    refused = api.get("/admin/flags", token=created["token"])
    assert refused.status_code == 401
    assert api.error(refused)["code"] == "unauthenticated"
    rows = api.store.list_history(HistoryQuery(action="token.revoke")).items
    assert [r.after["id"] for r in rows] == [created["id"]]


def test_revoke_token__unknown_id__404(api: Any) -> None:
    """Revoking an id that does not exist answers 404."""
    response = api.delete("/admin/tokens/0123456789abcdef")
    assert response.status_code == 404
    assert api.error(response)["code"] == "token_not_found"


def test_scoped_admin__tokens__only_within_its_environments(api: Any) -> None:
    """An admin scoped to beta creates, lists and revokes tokens within beta only."""
    scoped = api.token("admin", ["beta"])
    other = api.post("/admin/tokens", json={"name": "prod", "role": "reader"}).json()
    unscoped = api.post("/admin/tokens", json={"name": "x", "role": "reader"}, token=scoped)
    wider = api.post(
        "/admin/tokens",
        json={"name": "x", "role": "reader", "environments": ["beta", "production"]},
        token=scoped,
    )
    assert (unscoped.status_code, wider.status_code) == (403, 403)
    inside = api.post(
        "/admin/tokens",
        json={"name": "x", "role": "reader", "environments": ["beta"]},
        token=scoped,
    )
    assert inside.status_code == 201
    visible = {t["name"] for t in api.get("/admin/tokens", token=scoped).json()["items"]}
    assert "prod" not in visible and "x" in visible
    assert api.delete(f"/admin/tokens/{other['id']}", token=scoped).status_code == 403
    assert api.delete(f"/admin/tokens/{inside.json()['id']}", token=scoped).status_code == 200


def test_token__authorization_header_forms__bearer_only(api: Any) -> None:
    """Only ``Authorization: Bearer <token>`` authenticates; anything else is 401."""
    good = {"Authorization": f"Bearer {api.admin}"}
    assert api.get("/admin/flags", token="", headers=good).status_code == 200
    for header in (api.admin, f"Basic {api.admin}", "Bearer", "Bearer  ", f"Bearer {api.admin}x"):
        response = api.get("/admin/flags", token="", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["www-authenticate"] == "Bearer"
        assert api.error(response)["field"] == "Authorization"
