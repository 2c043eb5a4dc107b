"""flags.plans.store: a plan step is one transaction with its flag change (SQLite, PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from plan_support import ENV, FLAG, FakeClock, five_stages

from flags.errors import FlagNotFoundError, PlanNotFoundError, PlanStateError
from flags.history import HistoryQuery
from flags.model import StateChange
from flags.plans.model import ApplyStage, PlanStatus, parse_plan, parse_schedule
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore


def history(store: SqlFlagStore, **filters: Any) -> list[Any]:
    """History rows matching ``filters``, oldest first."""
    page = store.list_history(HistoryQuery(limit=500, **filters))
    return list(reversed(page.items))


def test_create__no_start_at__applies_first_stage_in_same_transaction(
    plan_store: PlanStore, flag_store: SqlFlagStore
) -> None:
    """Creating a plan applies stage 0 at once; the change is recorded as ``plan:<id>``."""
    # When
    plan = plan_store.create(FLAG, parse_plan(five_stages()), actor="alice")
    # Then
    assert (plan.status, plan.stage) == (PlanStatus.RUNNING, 0)
    state = flag_store.get_state(FLAG, ENV)
    assert (state.enabled, state.tenants_on, state.rollout) == (True, {"internal"}, 0)
    rows = history(flag_store, flag=FLAG, environment=ENV)
    assert [(r.actor, r.action) for r in rows] == [
        ("alice", "plan.create"),
        (f"plan:{plan.id}", "state.update"),
    ]
    assert "stage 1 of 5" in rows[1].reason
    assert plan_store.get(plan.id) == plan


def test_create__start_at_later__stays_pending_and_changes_nothing(
    plan_store: PlanStore, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    start = clock() + timedelta(hours=2)
    plan = plan_store.create(FLAG, parse_plan(five_stages(start_at=start.isoformat())), actor="a")
    assert (plan.status, plan.stage, plan.start_at) == (PlanStatus.PENDING, None, start)
    assert flag_store.get_state(FLAG, ENV).version == 0


def test_create__unknown_flag__raises_flag_not_found(plan_store: PlanStore) -> None:
    with pytest.raises(FlagNotFoundError):
        plan_store.create("no.such.flag", parse_plan(five_stages()), actor="alice")


def test_create__flag_killed__refuses_to_start(
    plan_store: PlanStore, flag_store: SqlFlagStore
) -> None:
    flag_store.kill(FLAG, [ENV], reason="incident", actor="bob")
    with pytest.raises(PlanStateError, match="unkill it"):
        plan_store.create(FLAG, parse_plan(five_stages()), actor="alice")


def test_create__second_plan_on_same_flag_and_environment__conflicts_until_aborted(
    plan_store: PlanStore,
) -> None:
    first = plan_store.create(FLAG, parse_plan(five_stages()), actor="alice")
    with pytest.raises(PlanStateError, match=f"plan {first.id} is running"):
        plan_store.create(FLAG, parse_plan(five_stages()), actor="alice")
    plan_store.abort(first.id, actor="alice", reason="replanning")
    assert plan_store.create(FLAG, parse_plan(five_stages()), actor="alice").stage == 0


def test_execute__stale_plan_version__writes_nothing(
    plan_store: PlanStore, flag_store: SqlFlagStore
) -> None:
    """Two schedulers that decided on the same plan version: only the first one acts."""
    plan = plan_store.create(FLAG, parse_plan(five_stages()), actor="alice")
    step = ApplyStage(1, StateChange(rollout=5), "stage 2")
    # When
    first = plan_store.execute(plan, step)
    second = plan_store.execute(plan, step)
    # Then
    assert first is not None and first.stage == 1
    assert second is None
    assert flag_store.get_state(FLAG, ENV).rollout == 5
    assert len(history(flag_store, actor=f"plan:{plan.id}")) == 2


def test_execute__crash_inside_the_step__leaves_no_half_applied_stage(
    flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    """A failure after the flag write but before the commit undoes the flag write too."""

    class Crash(Exception):
        pass

    def crash(_plan: Any, step: Any) -> None:
        if isinstance(step, ApplyStage) and step.index == 1:
            raise Crash

    store = PlanStore(flag_store, clock=clock, step_hook=crash)
    plan = store.create(FLAG, parse_plan(five_stages()), actor="alice")
    before = flag_store.get_state(FLAG, ENV)
    # When
    with pytest.raises(Crash):
        store.execute(plan, ApplyStage(1, StateChange(rollout=5), "stage 2"))
    # Then
    assert flag_store.get_state(FLAG, ENV) == before
    assert store.get(plan.id) == plan
    assert len(history(flag_store, actor=f"plan:{plan.id}")) == 1


def test_pause_resume_abort__each__is_recorded_with_the_person_as_actor(
    plan_store: PlanStore, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    plan = plan_store.create(FLAG, parse_plan(five_stages()), actor="alice")
    paused = plan_store.pause(plan.id, actor="bob", reason="lunch")
    clock.advance(hours=1)
    resumed = plan_store.resume(plan.id, actor="bob")
    aborted = plan_store.abort(plan.id, actor="carol", reason="not today")
    assert [p.status for p in (paused, resumed, aborted)] == [
        PlanStatus.PAUSED,
        PlanStatus.RUNNING,
        PlanStatus.ABORTED,
    ]
    assert resumed.stage_started_at == clock()
    assert aborted.reason == "not today"
    rows = history(flag_store, flag=FLAG, environment=ENV)
    assert [(r.actor, r.action, r.reason) for r in rows[-3:]] == [
        ("bob", "plan.pause", "lunch"),
        ("bob", "plan.resume", None),
        ("carol", "plan.abort", "not today"),
    ]
    with pytest.raises(PlanStateError):
        plan_store.resume(plan.id, actor="bob")


def test_advance__paused_plan__applies_next_stage_and_stays_paused(
    plan_store: PlanStore, flag_store: SqlFlagStore
) -> None:
    plan = plan_store.create(FLAG, parse_plan(five_stages()), actor="alice")
    plan_store.pause(plan.id, actor="bob")
    after = plan_store.advance(plan.id, actor="bob")
    assert (after.status, after.stage) == (PlanStatus.PAUSED, 1)
    assert flag_store.get_state(FLAG, ENV).rollout == 5
    row = history(flag_store, actor=f"plan:{plan.id}")[-1]
    assert "advanced by bob" in row.reason


def test_create__schedule_due_now__applies_and_completes_at_once(
    plan_store: PlanStore, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    spec = parse_schedule(
        {"environment": ENV, "at": clock().isoformat(), "change": {"enabled": True, "rollout": 10}}
    )
    plan = plan_store.create(FLAG, spec, actor="alice")
    assert (plan.status, plan.stage) == (PlanStatus.COMPLETED, 0)
    state = flag_store.get_state(FLAG, ENV)
    assert (state.enabled, state.rollout) == (True, 10)
    assert [r.action for r in history(flag_store, actor=f"plan:{plan.id}")] == [
        "state.update",
        "plan.complete",
    ]


def test_get__unknown_id__raises_plan_not_found(plan_store: PlanStore) -> None:
    with pytest.raises(PlanNotFoundError):
        plan_store.get(424242)
