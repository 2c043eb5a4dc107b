"""The approval gate wired into every change path of the admin API and the CLI on the
database (on SQLite and PostgreSQL): a raising change in a gated environment answers
202 with its change request and does not apply; a lowering one applies at once;
break-glass applies with a review item; ``flagrail env policy`` sets the policy."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from api.cli import main
from flags.history import HistoryQuery
from flags.model import StateChange
from flags.store.sql import SqlFlagStore
from tests.api.conftest import Api, make_app_settings

ENV = "production"


# The gate's SQL is the change-request store's, tested on both databases there; the
# paths through it run on SQLite, and the ones that write a change on both.
BOTH = pytest.mark.parametrize(
    "app_api", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


class Gate(Api):
    """The module's API, with this test's own flag (on at 10% in production)."""

    def __init__(self, client: Any, store: SqlFlagStore, url: str, flag: str) -> None:
        super().__init__(client, store, url)
        self.flag = flag
        self.path = f"/admin/flags/{flag}/environments/{ENV}"


@pytest.fixture(scope="module")
def app_api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """One app per module (and database): production gated by one approval. SQLite
    unless parametrized (``BOTH``)."""
    import warnings

    from api.app import create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    kind = getattr(request, "param", "sqlite")
    dropped: list[str] = []
    if kind == "sqlite":
        path = tmp_path_factory.mktemp("gate") / "flagrail.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        database_url = f"sqlite:///{path}"
    else:
        databases = request.getfixturevalue("postgres_databases")
        if databases is None:
            request.getfixturevalue("root_conftest")._unavailable("PostgreSQL")
        name = databases.create()
        dropped.append(name)
        database_url = request.getfixturevalue("root_conftest").pg_url(name)
    store = SqlFlagStore(database_url)
    try:
        app = create_app(make_app_settings(database_url), store=store)
        with TestClient(app, raise_server_exceptions=False) as client:
            api = Api(client, store, database_url)
            put = api.request(
                "PUT", f"/admin/environments/{ENV}/policy", json={"required_approvals": 1}
            )
            assert put.status_code == 200, put.text
            yield api
    finally:
        for name in dropped:
            databases.drop(name)


@pytest.fixture
def api(app_api: Api) -> Gate:
    """The module's API with a new flag of this test's own."""
    gate = Gate(app_api.client, app_api.store, app_api.url, f"gate.f{uuid.uuid4().hex[:10]}")
    gate.create_flag(gate.flag)
    gate.store.update_state(gate.flag, ENV, StateChange(enabled=True, rollout=10), actor="seed")
    return gate


def state(api: Gate) -> dict[str, Any]:
    return api.store.get_state(api.flag, ENV).to_dict()


def pending(response: Any) -> dict[str, Any]:
    """The change request of a 202 answer."""
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "pending"
    return body


class TestStatePath:
    def test_set_state__rollout_up__202_request_not_applied(self, api: Gate) -> None:
        """A raise waits as a request whose diff shows the move; the flag stays."""
        editor = api.token("editor")
        body = pending(api.patch(api.path, token=editor, json={"rollout": 50, "reason": "ramp"}))
        assert body["diff"] == [
            {"field": "rollout", "direction": "raises", "before": 10, "after": 50}
        ]
        assert body["reason"] == "ramp" and body["required_approvals"] == 1
        assert state(api)["rollout"] == 10

    @BOTH
    def test_set_state__approved_by_second_token__applied_with_history(self, api: Gate) -> None:
        """The author cannot approve; a second person's approval applies it, and the
        history row names the request, its author and approver."""
        author, approver = api.token("editor"), api.token("editor")
        number = pending(api.patch(api.path, token=author, json={"rollout": 50}))["id"]
        own = api.post(f"/admin/change-requests/{number}/approve", token=author)
        assert own.status_code == 403 and api.error(own)["code"] == "self_approval"
        done = api.post(f"/admin/change-requests/{number}/approve", token=approver)
        assert done.status_code == 200 and done.json()["status"] == "applied"
        assert state(api)["rollout"] == 50
        [row] = api.store.list_history(
            HistoryQuery(flag=api.flag, action="state.update", limit=1)
        ).items
        assert row.actor == "editor"
        assert f"change request {number}" in (row.reason or "")
        assert "approved by token:" in (row.reason or "")

    @pytest.mark.parametrize(
        "change",
        [
            {"rollout": 5},
            {"enabled": False},
            {"tenants_off_add": ["acme"]},
        ],
        ids=["rollout down", "disable", "tenant off"],
    )
    def test_set_state__lowering__applies_at_once(self, api: Gate, change: dict[str, Any]) -> None:
        """A change that lowers risk never waits, approvals or not."""
        response = api.patch(api.path, token=api.token("editor"), json=change)
        assert response.status_code == 200, response.text
        listed = api.get("/admin/change-requests", params={"flag": api.flag}).json()["items"]
        assert listed == []

    def test_set_state__tenant_on_added__held(self, api: Gate) -> None:
        """A per-tenant list edit that lets a tenant in is a raise like any other."""
        pending(api.patch(api.path, token=api.token("editor"), json={"tenants_on_add": ["acme"]}))
        assert state(api)["tenants_on"] == []

    def test_set_state__ungated_environment__applies(self, api: Gate) -> None:
        """Environments without a policy are as before."""
        response = api.patch(
            f"/admin/flags/{api.flag}/environments/development", json={"rollout": 100}
        )
        assert response.status_code == 200, response.text


class TestKillPath:
    @BOTH
    def test_kill__gated__instant_and_unkill__held(self, api: Gate) -> None:
        """A kill (lowering) by an operator applies at once; lifting it is a request."""
        operator = api.token("operator")
        kill = api.post(
            f"/admin/flags/{api.flag}/kill",
            token=operator,
            json={"reason": "incident", "environments": [ENV]},
        )
        assert kill.status_code == 200 and state(api)["killed"] is True
        unkill = api.post(
            f"/admin/flags/{api.flag}/unkill",
            token=operator,
            json={"reason": "fixed", "environments": [ENV, "development"]},
        )
        body = pending(unkill)
        [request] = body["change_requests"]
        assert request["kind"] == "unkill" and request["environment"] == ENV
        assert state(api)["killed"] is True


class TestBreakGlass:
    def test_break_glass__editor__403(self, api: Gate) -> None:
        response = api.patch(
            api.path + "?break_glass=true",
            token=api.token("editor"),
            json={"rollout": 90, "reason": "outage"},
        )
        assert response.status_code == 403 and api.error(response)["field"] == "break_glass"

    def test_break_glass__no_reason__422_naming_reason(self, api: Gate) -> None:
        response = api.patch(api.path + "?break_glass=true", json={"rollout": 90})
        assert response.status_code == 422 and api.error(response)["field"] == "reason"

    @BOTH
    def test_break_glass__admin__applied_and_review_open(self, api: Gate) -> None:
        """Applied at once, recorded as break-glass, listed for review."""
        response = api.patch(
            api.path + "?break_glass=true", json={"rollout": 90, "reason": "outage"}
        )
        assert response.status_code == 200, response.text
        assert state(api)["rollout"] == 90
        [item] = [i for i in api.get("/admin/reviews").json()["items"] if i["flag"] == api.flag]
        assert item["reason"] == "outage" and item["open"] is True
        [row] = api.store.list_history(HistoryQuery(flag=api.flag, limit=1)).items
        assert row.reason == "break-glass: outage"


class TestPlans:
    PLAN = {"environment": ENV, "stages": [{"rollout": 25, "hold": "1h"}, {"rollout": 100}]}

    @BOTH
    def test_plan__gated__one_request__approved_creates_the_plan(self, api: Gate) -> None:
        """The whole plan is one request; its approval creates the plan (first stage
        applied), the plan's history row naming the request."""
        author, approver = api.token("editor"), api.token("editor")
        body = pending(api.post(f"/admin/flags/{api.flag}/plans", token=author, json=self.PLAN))
        assert body["kind"] == "plan" and body["plan"] == self.PLAN
        assert api.get(f"/admin/flags/{api.flag}/plans").json()["items"] == []
        done = api.post(f"/admin/change-requests/{body['id']}/approve", token=approver)
        assert done.status_code == 200 and done.json()["status"] == "applied", done.text
        [plan] = api.get(f"/admin/flags/{api.flag}/plans").json()["items"]
        assert plan["status"] == "running" and state(api)["rollout"] == 25
        [row] = api.store.list_history(HistoryQuery(flag=api.flag, action="plan.create")).items
        assert f"change request {body['id']}" in (row.reason or "")

    def test_plan__break_glass__created_with_review(self, api: Gate) -> None:
        """An admin creates a plan at once with ``?break_glass=true&reason=...``."""
        path = f"/admin/flags/{api.flag}/plans"
        missing = api.post(path + "?break_glass=true", json=self.PLAN)
        assert missing.status_code == 422 and api.error(missing)["field"] == "reason"
        made = api.post(path + "?break_glass=true&reason=launch", json=self.PLAN)
        assert made.status_code == 201 and made.json()["status"] == "running", made.text
        [item] = [i for i in api.get("/admin/reviews").json()["items"] if i["flag"] == api.flag]
        assert item["reason"] == "launch"

    def test_schedule__gated__held(self, api: Gate) -> None:
        schedule = {"environment": ENV, "at": "2099-01-01T00:00:00Z", "change": {"rollout": 60}}
        body = pending(
            api.post(f"/admin/flags/{api.flag}/schedules", token=api.token("editor"), json=schedule)
        )
        assert body["kind"] == "schedule"


class TestCliOnTheDatabase:
    def run(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main([*args])
        out = capsys.readouterr()
        return int(exit_info.value.code or 0), out.out + out.err

    def test_set__gated__prints_request_and_break_glass_applies(
        self, api: Gate, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``flagrail set`` on the database goes through the same gate; ``--break-glass
        --reason`` applies at once."""
        db = ("--database-url", api.url)
        code, out = self.run(capsys, "set", api.flag, "--env", ENV, "--rollout", "40", *db)
        assert code == 0 and out.startswith("pending approval: change request "), out
        assert state(api)["rollout"] == 10
        code, out = self.run(
            capsys, "set", api.flag, "--env", ENV, "--rollout", "40", "--break-glass",
            "--reason", "outage", *db,
        )  # fmt: skip
        assert code == 0 and state(api)["rollout"] == 40, out
        code, out = self.run(capsys, "cr", "reviews", "--json", *db)
        items = json.loads(out)["items"]
        assert [i["reason"] for i in items if i["flag"] == api.flag] == ["outage"]

    def test_env_policy__set_and_show__history_row(
        self, api: Gate, capsys: pytest.CaptureFixture[str]
    ) -> None:
        db = ("--database-url", api.url)
        code, out = self.run(capsys, "env", "policy", "staging", "--approvals", "2", *db)
        assert code == 0 and "staging: 2 approvals" in out, out
        code, out = self.run(capsys, "env", "policy", "staging", "--json", *db)
        assert json.loads(out)["required_approvals"] == 2
        rows = api.store.list_history(HistoryQuery(action="environment.policy")).items
        assert [r.environment for r in rows][:1] == ["staging"]
        code, out = self.run(capsys, "env", "policy", "staging", "--approvals", "9", *db)
        assert code == 2 and "approvals" in out
