"""``/admin/flags``: create, read, list, update, archive, per-environment state, kill switch."""

from __future__ import annotations

from typing import Any

from flags.history import HistoryQuery

ENVS = ["beta", "development", "production", "staging"]
STATE_FIELDS = {
    "enabled",
    "rollout",
    "tenants_on",
    "tenants_off",
    "killed",
    "kill_reason",
    "killed_at",
    "killed_by",
    "version",
}


def history(api: Any, **filters: Any) -> list[Any]:
    return api.store.list_history(HistoryQuery(limit=500, **filters)).items


class TestCreateAndRead:
    def test_create_flag__valid__201_with_every_field_and_environment(self, api: Any) -> None:
        """A created flag answers 201 with its fields and an off state in each environment."""
        response = api.post(
            "/admin/flags",
            json={
                "key": "auth.cache.l2",
                "description": "second auth cache layer",
                "kind": "operational",
                "owner": "team-auth",
                "tags": ["auth", "cache"],
            },
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {
            "key",
            "description",
            "kind",
            "owner",
            "tags",
            "archived",
            "created_at",
            "environments",
        }
        assert (body["key"], body["kind"], body["owner"], body["tags"], body["archived"]) == (
            "auth.cache.l2",
            "operational",
            "team-auth",
            ["auth", "cache"],
            False,
        )
        assert sorted(body["environments"]) == ENVS
        for state in body["environments"].values():
            assert set(state) >= STATE_FIELDS
            assert (state["enabled"], state["rollout"], state["killed"], state["version"]) == (
                False,
                0,
                False,
                0,
            )
        assert api.get("/admin/flags/auth.cache.l2").json() == body

    def test_create_flag__existing_key__409_naming_key(self, api: Any) -> None:
        """Creating a key twice answers 409 already_exists for the key."""
        api.create_flag("a.b")
        response = api.post("/admin/flags", json={"key": "a.b"})
        assert response.status_code == 409
        assert api.error(response)["code"] == "already_exists"
        assert api.error(response)["field"] == "key"

    def test_get_flag__unknown__404(self, api: Any) -> None:
        """An unknown key answers 404 flag_not_found."""
        response = api.get("/admin/flags/no.such.flag")
        assert response.status_code == 404
        assert api.error(response)["code"] == "flag_not_found"

    def test_list_flags__filters__kind_tag_archived_q(self, api: Any) -> None:
        """The list filters by kind, tag, archived and a search in key and description."""
        api.create_flag("auth.cache", kind="operational", tags=["auth"])
        api.create_flag("auth.login", description="login page", tags=["web"])
        api.create_flag("billing.v2", description="pays via AUTH provider")
        assert api.delete("/admin/flags/auth.login").status_code == 200

        def keys(query: str) -> list[str]:
            response = api.get(f"/admin/flags{query}")
            assert response.status_code == 200, response.text
            return [item["key"] for item in response.json()["items"]]

        assert keys("") == ["auth.cache", "auth.login", "billing.v2"]
        assert keys("?kind=operational") == ["auth.cache"]
        assert keys("?tag=web") == ["auth.login"]
        assert keys("?archived=false") == ["auth.cache", "billing.v2"]
        assert keys("?archived=true") == ["auth.login"]
        assert keys("?q=auth") == ["auth.cache", "auth.login", "billing.v2"]
        assert keys("?q=login&archived=true") == ["auth.login"]

    def test_get_flag__scoped_reader__sees_only_its_environments(self, api: Any) -> None:
        """A token scoped to beta sees the flag's beta state only."""
        api.create_flag("a.b")
        reader = api.token("reader", ["beta"])
        body = api.get("/admin/flags/a.b", token=reader).json()
        assert list(body["environments"]) == ["beta"]
        listed = api.get("/admin/flags", token=reader).json()["items"][0]
        assert list(listed["environments"]) == ["beta"]


class TestUpdateAndArchive:
    def test_update_flag__fields__200_changed_object_and_history(self, api: Any) -> None:
        """PATCH changes description, owner, tags and kind, and records flag.update."""
        api.create_flag("a.b")
        response = api.patch(
            "/admin/flags/a.b",
            json={"description": "new", "owner": "me", "tags": ["x"], "kind": "permission"},
        )
        assert response.status_code == 200
        body = response.json()
        assert (body["description"], body["owner"], body["tags"], body["kind"]) == (
            "new",
            "me",
            ["x"],
            "permission",
        )
        (entry,) = history(api, action="flag.update")
        assert entry.before["owner"] is None and entry.after["owner"] == "me"
        assert entry.actor == "admin"

    def test_archive_flag__delete__archived_answers_200_and_history_kept(self, api: Any) -> None:
        """DELETE archives: the flag still answers 200 with archived true; history stays."""
        api.create_flag("a.b")
        api.patch("/admin/flags/a.b/environments/beta", json={"enabled": True})
        response = api.delete("/admin/flags/a.b")
        assert response.status_code == 200
        assert response.json()["archived"] is True
        again = api.get("/admin/flags/a.b")
        assert again.status_code == 200 and again.json()["archived"] is True
        actions = [e.action for e in history(api, flag="a.b")]
        assert actions == ["flag.archive", "state.update", "flag.create"]
        assert api.get("/admin/flags/a.b/history").json()["items"][0]["action"] == "flag.archive"

    def test_update_state__archived_flag__409(self, api: Any) -> None:
        """An archived flag's state cannot change."""
        api.create_flag("a.b")
        api.delete("/admin/flags/a.b")
        response = api.patch("/admin/flags/a.b/environments/beta", json={"enabled": True})
        assert response.status_code == 409


class TestState:
    def test_update_state__fields__200_with_state_and_etag(self, api: Any) -> None:
        """PATCH of a state answers the new state, its version, and an ETag."""
        api.create_flag("a.b")
        response = api.patch(
            "/admin/flags/a.b/environments/production",
            json={
                "enabled": True,
                "rollout": 25,
                "tenants_on": ["acme"],
                "tenants_off": ["globex"],
                "reason": "pilot",
            },
        )
        assert response.status_code == 200
        body = response.json()
        assert (body["flag"], body["environment"]) == ("a.b", "production")
        assert set(body) >= STATE_FIELDS
        assert (body["enabled"], body["rollout"], body["tenants_on"], body["tenants_off"]) == (
            True,
            25,
            ["acme"],
            ["globex"],
        )
        assert body["version"] == 1
        assert response.headers["etag"] == '"1"'
        (entry,) = history(api, action="state.update")
        assert (entry.reason, entry.environment, entry.after["rollout"]) == (
            "pilot",
            "production",
            25,
        )
        assert entry.request_id == response.headers["x-request-id"]
        other = api.get("/admin/flags/a.b").json()["environments"]["beta"]
        assert other["enabled"] is False

    def test_update_state__add_and_remove_tenants__edits_lists(self, api: Any) -> None:
        """``*_add``/``*_remove`` edit the lists; adding to one list leaves the other."""
        api.create_flag("a.b")
        path = "/admin/flags/a.b/environments/beta"
        api.patch(path, json={"tenants_on": ["a", "b"], "tenants_off": ["c"]})
        body = api.patch(
            path,
            json={"tenants_on_add": ["c"], "tenants_on_remove": ["a"], "tenants_off_add": ["b"]},
        ).json()
        assert (body["tenants_on"], body["tenants_off"]) == (["c"], ["b"])

    def test_update_state__if_match_current__200(self, api: Any) -> None:
        """If-Match with the current version applies the change."""
        api.create_flag("a.b")
        path = "/admin/flags/a.b/environments/beta"
        response = api.patch(path, json={"enabled": True}, headers={"If-Match": '"0"'})
        assert response.status_code == 200 and response.json()["version"] == 1

    def test_update_state__if_match_stale__409_with_current_and_nothing_written(
        self, api: Any
    ) -> None:
        """A stale If-Match answers 409 carrying the current state, and writes nothing."""
        api.create_flag("a.b")
        path = "/admin/flags/a.b/environments/beta"
        api.patch(path, json={"enabled": True})
        rows = len(history(api))
        response = api.patch(path, json={"rollout": 90}, headers={"If-Match": '"0"'})
        assert response.status_code == 409
        assert api.error(response)["code"] == "version_conflict"
        current = response.json()["current"]
        assert (current["version"], current["enabled"], current["rollout"]) == (1, True, 0)
        assert len(history(api)) == rows
        assert api.get("/admin/flags/a.b").json()["environments"]["beta"]["rollout"] == 0

    def test_update_state__unknown_flag_or_environment__404(self, api: Any) -> None:
        """Unknown flag or environment answers 404 naming which."""
        api.create_flag("a.b")
        missing_flag = api.patch("/admin/flags/x.y/environments/beta", json={"enabled": True})
        missing_env = api.patch("/admin/flags/a.b/environments/nowhere", json={"enabled": True})
        assert (missing_flag.status_code, missing_env.status_code) == (404, 404)
        assert api.error(missing_env)["field"] == "environment"


class TestKill:
    def test_kill__no_environments__all_killed_one_history_row_each(self, api: Any) -> None:
        """A kill without environments kills every environment, one row each, same request."""
        api.create_flag("a.b")
        api.patch("/admin/flags/a.b/environments/production", json={"enabled": True})
        response = api.post("/admin/flags/a.b/kill", json={"reason": "401 storm"})
        assert response.status_code == 200
        body = response.json()
        assert body["flag"] == "a.b"
        assert sorted(body["changed"]) == ENVS
        for state in body["environments"].values():
            assert (state["killed"], state["kill_reason"], state["killed_by"]) == (
                True,
                "401 storm",
                "admin",
            )
            assert state["killed_at"]
        rows = history(api, action="kill")
        assert sorted(e.environment for e in rows) == ENVS
        assert {e.request_id for e in rows} == {response.headers["x-request-id"]}
        assert {e.reason for e in rows} == {"401 storm"}
        assert body["environments"]["production"]["enabled"] is True

    def test_kill__already_killed__200_and_writes_nothing(self, api: Any) -> None:
        """Killing a killed flag answers 200, changes nothing and writes no history."""
        api.create_flag("a.b")
        api.post("/admin/flags/a.b/kill", json={"reason": "first"})
        rows = len(history(api))
        response = api.post("/admin/flags/a.b/kill", json={"reason": "second"})
        assert response.status_code == 200
        assert response.json()["changed"] == []
        assert response.json()["environments"]["beta"]["kill_reason"] == "first"
        assert len(history(api)) == rows

    def test_kill__scoped_operator_without_environments__only_its_environments(
        self, api: Any
    ) -> None:
        """An operator scoped to beta that names no environments kills in beta only."""
        api.create_flag("a.b")
        operator = api.token("operator", ["beta"])
        response = api.post("/admin/flags/a.b/kill", json={"reason": "r"}, token=operator)
        assert response.status_code == 200
        assert response.json()["changed"] == ["beta"]
        states = api.get("/admin/flags/a.b").json()["environments"]
        assert {env: s["killed"] for env, s in states.items()} == {
            "beta": True,
            "development": False,
            "production": False,
            "staging": False,
        }

    def test_kill__named_environments__only_those(self, api: Any) -> None:
        """A kill naming environments touches those only; unkill lifts it there."""
        api.create_flag("a.b")
        killed = api.post(
            "/admin/flags/a.b/kill", json={"reason": "r", "environments": ["production"]}
        )
        assert killed.json()["changed"] == ["production"]
        unkilled = api.post(
            "/admin/flags/a.b/unkill", json={"reason": "ok", "environments": ["production"]}
        )
        assert unkilled.status_code == 200
        assert unkilled.json()["changed"] == ["production"]
        state = unkilled.json()["environments"]["production"]
        assert (state["killed"], state["kill_reason"], state["version"]) == (False, None, 2)
        assert [e.action for e in history(api, environment="production")] == ["unkill", "kill"]

    def test_kill__unknown_flag_or_environment__404_and_nothing_written(self, api: Any) -> None:
        """An unknown flag or environment fails the kill as a whole."""
        api.create_flag("a.b")
        rows = len(history(api))
        unknown_flag = api.post("/admin/flags/x.y/kill", json={"reason": "r"})
        unknown_env = api.post(
            "/admin/flags/a.b/kill", json={"reason": "r", "environments": ["beta", "nowhere"]}
        )
        assert (unknown_flag.status_code, unknown_env.status_code) == (404, 404)
        assert api.error(unknown_env)["field"] == "environments"
        assert len(history(api)) == rows
