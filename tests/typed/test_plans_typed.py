"""Rollout plans stepping a typed flag's split (#19): 0 -> 100 -> 500 -> 1000 of the new
variant with the same guards; a breach returns to the previous split (no kill) and the
plan to that stage; a breach at the first split stage kills (the safe variant)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from flags.errors import InvalidRuleError, ValidationError
from flags.history import HistoryQuery
from flags.model import StateChange
from flags.plans.model import (
    Observation,
    Plan,
    PlanKind,
    PlanStatus,
    Reading,
    RollBack,
    next_action,
    parse_plan,
    spec_to_dict,
)
from flags.plans.scheduler import InMemoryMetrics, PlanScheduler
from flags.plans.store import PlanStore
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from tests.cli.test_cli import Cli, Server, assert_one_line_error, server  # noqa: F401

KEY = "checkout.engine"
ENV = "production"
T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def split_plan(hold: str = "10m") -> dict[str, Any]:
    """The issue's example: the new variant at 0, 100, 500, then 1000 of 1000."""
    return {
        "environment": ENV,
        "stages": [
            {"enabled": True, "split": {"old": 1000, "new": 0}, "hold": hold},
            {"split": {"old": 900, "new": 100}, "hold": hold},
            {"split": {"old": 500, "new": 500}, "hold": hold},
            {"split": [{"variant": "old", "weight": 0}, {"variant": "new", "weight": 1000}]},
        ],
        "guards": [{"metric": f"{KEY}.error_rate", "max": 0.01}],
    }


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_parse_plan__split_stages__round_trip_and_describe() -> None:
    """Split stages parse, describe themselves and read back from their stored form."""
    spec = parse_plan(split_plan())
    assert spec.stages[1].change.split == (("old", 900), ("new", 100))
    assert spec.stages[1].describe() == "split=old=900,new=100"
    assert parse_plan(spec_to_dict(spec)) == spec


@pytest.mark.parametrize(
    ("stage", "field"),
    [
        ({"split": {"old": 10, "new": 10}}, "stages.0.split"),
        ({"split": {"old": 1000, "bad name": 0}}, "stages.0.split.1.variant"),
        ({"split": "old=1000"}, "stages.0.split"),
    ],
)
def test_parse_plan__bad_split__names_the_field(stage: dict[str, Any], field: str) -> None:
    """A malformed split is refused naming its place in the plan."""
    with pytest.raises(ValidationError) as err:
        parse_plan({"environment": ENV, "stages": [stage]})
    assert err.value.field == field


def _plan_at(stage: int) -> Plan:
    spec = parse_plan(split_plan())
    return Plan(
        id=1,
        kind=PlanKind.PLAN,
        flag=KEY,
        environment=ENV,
        stages=spec.stages,
        guards=spec.guards,
        status=PlanStatus.RUNNING,
        stage=stage,
        stage_started_at=T0,
        start_at=None,
        reason=None,
        created_at=T0,
        created_by="alice",
        updated_at=T0,
    )


def _breach(plan: Plan) -> Observation:
    reading = Reading(plan.guards[0], 0.5, 50, 100, T0)
    return Observation(readings=(reading,))


def test_next_action__breach_in_a_later_split_stage__back_to_the_previous_split() -> None:
    """At 500 a breach restores the 100 split and moves the plan back to that stage."""
    plan = _plan_at(2)
    step = next_action(plan, T0 + timedelta(minutes=1), _breach(plan))
    assert isinstance(step, RollBack)
    assert step.kill is False and step.to_stage == 1
    assert step.restore is not None and step.restore.split == (("old", 900), ("new", 100))
    assert "back to the split of stages.1" in step.reason


def test_next_action__breach_in_the_first_split_stage__kills() -> None:
    """With no previous split in the plan, a breach kills as any plan does."""
    plan = _plan_at(0)
    step = next_action(plan, T0 + timedelta(minutes=1), _breach(plan))
    assert isinstance(step, RollBack) and step.kill and step.restore is None


@pytest.fixture
def stores(database_url: str) -> Iterator[tuple[SqlFlagStore, PlanStore, Clock]]:
    store = SqlFlagStore(database_url)
    store.create_flag(
        KEY,
        type="string",
        variants=[{"name": "old", "value": "v1"}, {"name": "new", "value": "v2"}],
        off_variant="old",
        actor="test",
    )
    store.update_state(KEY, ENV, StateChange(rollout=100), actor="test")
    clock = Clock()
    try:
        yield store, PlanStore(store, clock=clock), clock
    finally:
        store.close()


def test_scheduler__split_plan__steps_then_rolls_back_to_the_previous_split(
    stores: tuple[SqlFlagStore, PlanStore, Clock],
) -> None:
    """The plan steps the split; a breach at 500 restores 100 without a kill, history
    shows the splits; resuming steps up again."""
    store, plans, clock = stores
    metrics = InMemoryMetrics()
    scheduler = PlanScheduler(plans, metrics)
    try:
        plan = plans.create(KEY, parse_plan(split_plan()), actor="alice")
        assert store.get_state(KEY, ENV).split == (("old", 1000), ("new", 0))
        for weight in (100, 500):
            clock.now += timedelta(minutes=11)
            scheduler.tick()
            assert dict(store.get_state(KEY, ENV).split)["new"] == weight
        metrics.add(KEY, ENV, clock.now, reads=100, errors=40)
        scheduler.tick()
        state = store.get_state(KEY, ENV)
        assert state.split == (("old", 900), ("new", 100))
        assert not state.killed
        plan = plans.get(plan.id)
        assert (plan.status, plan.stage) == (PlanStatus.ROLLED_BACK, 1)
        row = store.list_history(HistoryQuery(flag=KEY, action="state.update", limit=1)).items[0]
        assert row.before["split"][1] == {"variant": "new", "weight": 500}
        assert row.after["split"][1] == {"variant": "new", "weight": 100}
        assert "guard breached" in (row.reason or "")

        clock.now += timedelta(minutes=1)  # the bad reads stay in the rolled-back hold
        plans.resume(plan.id, actor="alice")
        clock.now += timedelta(minutes=11)
        scheduler.tick()
        assert dict(store.get_state(KEY, ENV).split)["new"] == 500
    finally:
        scheduler.close()


def test_create__split_over_an_undeclared_variant__refused_at_once(
    stores: tuple[SqlFlagStore, PlanStore, Clock],
) -> None:
    """A plan whose split names a variant the flag lacks is refused when created."""
    _store, plans, _clock = stores
    body = split_plan()
    body["stages"] = body["stages"][:2]  # later stages would take "newer" back down
    body["stages"][1]["split"] = {"old": 900, "newer": 100}
    with pytest.raises(ValidationError) as err:
        plans.create(KEY, parse_plan(body), actor="alice")
    assert err.value.field == "stages.1.split.1.variant"


def _stages(*splits: dict[str, int]) -> dict[str, Any]:
    """A plan body stepping ``splits`` in order, ten minutes apart."""
    return {
        "environment": ENV,
        "stages": [{"split": split, "hold": "10m"} for split in splits],
    }


@pytest.mark.parametrize(
    "splits",
    [
        ({"old": 1000, "new": 0}, {"old": 900, "new": 100}, {"old": 0, "new": 1000}),
        # A variant left out weighs 0; a stage may hold a split where it is.
        ({"old": 1000}, {"old": 900, "new": 100}, {"old": 900, "new": 100}, {"new": 1000}),
        # A variant at 0 has no tenants: where it sits does not matter.
        ({"old": 1000, "new": 0}, {"new": 100, "old": 900}),
        # Three variants, each moving one way: a and b give to c.
        ({"a": 400, "b": 200, "c": 400}, {"a": 200, "b": 200, "c": 600}, {"c": 1000}),
    ],
)
def test_parse_plan__split_moving_one_way__accepted(splits: tuple[dict[str, int], ...]) -> None:
    spec = parse_plan(_stages(*splits))
    assert [dict(s.change.split or ()) for s in spec.stages] == [
        {n: w for n, w in split.items()} for split in splits
    ]


@pytest.mark.parametrize(
    ("splits", "field", "message"),
    [
        (
            ({"old": 900, "new": 100}, {"old": 500, "new": 500}, {"old": 900, "new": 100}),
            "stages.2.split",
            "stages.2.split takes new down from 500 to 100 after stages.1.split took it up",
        ),
        (
            (
                {"old": 1000, "new": 0},
                {"old": 500, "new": 500},
                {"old": 500, "new": 500},
                {"old": 1000},
            ),
            "stages.3.split",
            "takes new down from 500 to 0 after stages.1.split took it up",
        ),
        (
            ({"a": 400, "b": 200, "c": 400}, {"a": 200, "b": 400, "c": 400}, {"c": 1000}),
            "stages.2.split",
            "takes b down from 400 to 0 after stages.1.split took it up",
        ),
        (
            ({"old": 500, "new": 500}, {"new": 500, "old": 500}),
            "stages.1.split",
            "orders new, old unlike stages.0.split (old, new)",
        ),
    ],
)
def test_parse_plan__split_going_both_ways__invalid_rule_naming_the_stage(
    splits: tuple[dict[str, int], ...], field: str, message: str
) -> None:
    """A plan moves a split one way: a variant raised is never lowered later (nor the
    reverse), and a reorder (which re-deals tenants) is refused."""
    with pytest.raises(InvalidRuleError) as err:
        parse_plan(_stages(*splits))
    assert err.value.field == field
    assert message in str(err.value)


def test_parse_plan__split_dropped_midway__invalid_rule() -> None:
    body = _stages({"old": 900, "new": 100})
    body["stages"].append({"split": [], "rollout": 100})
    with pytest.raises(InvalidRuleError) as err:
        parse_plan(body)
    assert err.value.field == "stages.1.split"
    assert "drops the split the plan steps" in str(err.value)


def test_api__split_plan_going_back__422_naming_the_field_and_nothing_created(
    stores: tuple[SqlFlagStore, PlanStore, Clock], database_url: str
) -> None:
    store, _plans, _clock = stores
    _info, token = store.create_token("release-manager", "editor", None, actor="test")
    auth = {"Authorization": f"Bearer {token}"}
    body = split_plan()
    body["stages"][2]["split"] = {"old": 950, "new": 50}
    app = create_app(Settings(database_url=database_url, scheduler=False), store=store)
    with TestClient(app) as client:
        response = client.post(f"/admin/flags/{KEY}/plans", json=body, headers=auth)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert (error["code"], error["field"]) == ("invalid_rule", "stages.2.split")
        assert "takes new down from 100 to 50 after stages.1.split took it up" in error["message"]
        assert client.get(f"/admin/flags/{KEY}/plans", headers=auth).json()["items"] == []
        response = client.post(f"/admin/flags/{KEY}/plans", json=split_plan(), headers=auth)
        assert response.status_code == 201, response.text


def test_cli__split_plan_going_back__one_line_error_naming_the_field(
    stores: tuple[SqlFlagStore, PlanStore, Clock],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``flagrail plan create -f`` prints the refusal in one line, exit 1."""
    running: Server = request.getfixturevalue("server")
    body = split_plan()
    body["stages"][3]["split"] = {"old": 600, "new": 400}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(body))
    cli = Cli(capsys, ["--url", running.url, "--token", running.token])
    assert_one_line_error(
        cli("plan", "create", KEY, "-f", str(plan_file)),
        "422 invalid_rule: stages.3.split takes new down from 500 to 400 after stages.2.split "
        "took it up",
    )
