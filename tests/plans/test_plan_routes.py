"""api/routes/plans.py: the plan endpoints on SQLite and PostgreSQL, errors named by field."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from plan_support import ENV, FLAG, five_stages

from api.app import create_app
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for


class Api:
    """A TestClient on an app without the scheduler thread, with tokens per role."""

    def __init__(self, client: TestClient, store: SqlFlagStore) -> None:
        self.client = client
        self.store = store
        self.tokens: dict[str, str] = {}

    def as_(self, role: str, envs: list[str] | None = None) -> dict[str, str]:
        key = f"{role}:{envs}"
        if key not in self.tokens:
            _info, secret = self.store.create_token(f"{role}-user", role, envs, actor="test")
            self.tokens[key] = secret
        return {"Authorization": f"Bearer {self.tokens[key]}"}

    def post(self, path: str, body: Any = None, role: str = "editor", **kw: Any) -> Any:
        return self.client.post(path, json=body, headers=self.as_(role, kw.get("envs")))

    def get(self, path: str, role: str = "reader") -> Any:
        return self.client.get(path, headers=self.as_(role))


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    store = SqlFlagStore(database_url)
    store.create_flag(FLAG, actor="test")
    app = create_app(Settings(database_url=database_url, scheduler=False), store=store)
    with TestClient(app) as client:
        yield Api(client, store)


def error(response: Any) -> dict[str, Any]:
    return response.json()["error"]  # type: ignore[no-any-return]


def test_create_plan__valid_body__201_with_first_stage_applied(api: Api) -> None:
    # When
    response = api.post(f"/admin/flags/{FLAG}/plans", five_stages())
    # Then
    assert response.status_code == 201, response.text
    plan = response.json()
    assert (plan["status"], plan["stage"], plan["flag"]) == ("running", 0, FLAG)
    assert plan["stages"][1] == {"rollout": 5, "hold": "30m"}
    assert plan["guards"] == [{"metric": f"{FLAG}.corrupt_rate", "max": 0.01}]
    state = api.get(f"/admin/flags/{FLAG}").json()["environments"][ENV]
    assert (state["enabled"], state["tenants_on"]) == (True, ["internal"])
    assert api.get(f"/admin/plans/{plan['id']}").json() == plan
    assert [p["id"] for p in api.get(f"/admin/flags/{FLAG}/plans").json()["items"]] == [plan["id"]]
    history = api.get(f"/admin/history?actor=plan:{plan['id']}").json()["items"]
    assert [h["action"] for h in history] == ["state.update"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"environment": ENV}, "stages"),
        ({"environment": ENV, "stages": []}, "stages"),
        (
            {"environment": ENV, "stages": [{"rollout": 5, "hold": "-10m"}, {"rollout": 9}]},
            "stages.0.hold",
        ),
        (
            {"environment": ENV, "stages": [{"rollout": 50, "hold": "1m"}, {"rollout": 10}]},
            "stages.1.rollout",
        ),
        (
            {"environment": ENV, "stages": [{"rollout": 5, "hold": "1m"}], "guards": [{}]},
            "guards.0.metric",
        ),
        ([1, 2], "body"),
    ],
)
def test_create_plan__bad_body__422_naming_the_field(api: Api, body: Any, field: str) -> None:
    """No stages, a negative hold, a rollout going down, a bad guard: 422 naming the field,
    and nothing is created."""
    response = api.post(f"/admin/flags/{FLAG}/plans", body)
    assert response.status_code == 422, response.text
    assert error(response)["field"] == field
    assert api.get(f"/admin/flags/{FLAG}/plans").json()["items"] == []


def test_create_plan__unknown_flag__404_even_with_a_bad_body(api: Api) -> None:
    response = api.post("/admin/flags/no.such.flag/plans", {"stages": []})
    assert response.status_code == 404
    assert error(response)["code"] == "flag_not_found"


def test_create_plan__token_not_scoped_to_environment__403(api: Api) -> None:
    response = api.post(f"/admin/flags/{FLAG}/plans", five_stages(), envs=["staging"])
    assert response.status_code == 403
    assert error(response)["field"] == "environment"


def test_plan_actions__pause_resume_advance_abort__move_the_plan_and_409_when_they_cannot(
    api: Api,
) -> None:
    plan_id = api.post(f"/admin/flags/{FLAG}/plans", five_stages()).json()["id"]
    base = f"/admin/plans/{plan_id}"
    # A reader may not pause; an operator may
    assert api.post(f"{base}/pause", role="reader").status_code == 403
    paused = api.post(f"{base}/pause", {"reason": "watching the dashboards"}, role="operator")
    assert paused.json()["status"] == "paused"
    assert api.post(f"{base}/pause", role="operator").status_code == 409
    # Resume and advance need an editor
    assert api.post(f"{base}/resume", role="operator").status_code == 403
    assert api.post(f"{base}/resume").json()["status"] == "running"
    advanced = api.post(f"{base}/advance").json()
    assert (advanced["stage"], advanced["status"]) == (1, "running")
    aborted = api.post(f"{base}/abort", {"reason": "stop"}, role="operator").json()
    assert (aborted["status"], aborted["reason"]) == ("aborted", "stop")
    conflict = api.post(f"{base}/advance")
    assert conflict.status_code == 409
    assert error(conflict)["code"] == "plan_state"
    actions = [
        (h["actor"], h["action"])
        for h in api.get(f"/admin/flags/{FLAG}/history?limit=20").json()["items"]
        if h["action"].startswith("plan.")
    ]
    assert actions == [
        ("operator-user", "plan.abort"),
        ("editor-user", "plan.resume"),
        ("operator-user", "plan.pause"),
        ("editor-user", "plan.create"),
    ]


def test_plan_actions__unknown_plan_or_bad_id__404_and_422(api: Api) -> None:
    assert error(api.get("/admin/plans/999999"))["code"] == "plan_not_found"
    response = api.get("/admin/plans/seven")
    assert response.status_code == 422
    assert error(response)["field"] == "plan_id"
    assert api.post("/admin/plans/1/pause", {"why": "x"}, role="operator").status_code == 422


def test_create_schedule__future_time__201_pending_and_past_time_422(api: Api) -> None:
    response = api.post(
        f"/admin/flags/{FLAG}/schedules",
        {"environment": ENV, "at": "2999-12-01T02:00:00Z", "change": {"enabled": True}},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["kind"], body["status"], body["at"]) == (
        "schedule",
        "pending",
        "2999-12-01T02:00:00+00:00",
    )
    past = api.post(
        f"/admin/flags/{FLAG}/schedules",
        {"environment": ENV, "at": "2001-01-01T00:00:00Z", "change": {"enabled": True}},
    )
    assert past.status_code == 422
    assert error(past)["field"] == "at"


def test_guard__sdk_reports_corrupt_reads__running_server_kills_and_rolls_back(
    database_url: str,
) -> None:
    """The whole loop in one server: a plan at 5%, SDKs report corrupt L2 reads through
    ``POST /sdk/v1/metrics``, and the scheduler kills the flag and rolls the plan back
    with the measured values, within a few ticks."""
    store = SqlFlagStore(database_url)
    store.create_flag(FLAG, actor="test")
    app = create_app(Settings(database_url=database_url, scheduler=True), store=store)
    with TestClient(app) as client:
        api = Api(client, store)
        body = five_stages("10m")
        body["stages"][0] = {"rollout": 5, "enabled": True, "hold": "10m"}
        plan = api.post(f"/admin/flags/{FLAG}/plans", body).json()
        report = {
            "environment": ENV,
            "counters": {FLAG: {"reads": 400, "corrupt_reads": 12, "mismatches": 0}},
        }
        sdk = client.post("/sdk/v1/metrics", json=report, headers=api.as_("client", [ENV]))
        assert sdk.status_code == 202, sdk.text
        # Then, within a few ticks
        rolled = wait_for(
            lambda: (
                (p := api.get(f"/admin/plans/{plan['id']}").json())["status"] == "rolled_back" and p
            ),
            timeout=15,
        )
        assert "12 corrupt_reads / 400 reads" in rolled["reason"]
        state = api.get(f"/admin/flags/{FLAG}").json()["environments"][ENV]
        assert (state["killed"], state["killed_by"]) == (True, f"plan:{plan['id']}")
        assert "corrupt_rate=0.03" in state["kill_reason"]
