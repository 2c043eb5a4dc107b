"""flags.plans.scheduler: plans advance on a fake clock, guards roll back, one leader on PG."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from plan_support import ENV, FLAG, FakeClock, five_stages

from flags.errors import PlanStateError
from flags.history import HistoryQuery
from flags.plans.model import PlanStatus, parse_plan, parse_schedule
from flags.plans.scheduler import InMemoryMetrics, PlanScheduler
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for


def plan_rows(store: SqlFlagStore, plan_id: int) -> list[Any]:
    """History rows written by ``plan:<id>``, oldest first."""
    return list(reversed(store.list_history(HistoryQuery(actor=f"plan:{plan_id}")).items))


def test_scheduler__five_stage_plan_on_fake_clock__applies_each_stage_once_after_its_hold(
    plan_store: PlanStore, scheduler: PlanScheduler, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    """Five stages of 30 minutes each, run in milliseconds: nothing moves before a hold
    ends, each stage is applied exactly once when it does, and the plan completes."""
    plan = plan_store.create(FLAG, parse_plan(five_stages("30m")), actor="alice")
    for expected in (5, 25, 50, 100):
        # When the hold is not over yet
        clock.advance(minutes=29, seconds=59)
        assert scheduler.tick() == []
        # When it is
        clock.advance(seconds=1)
        (after, _step), *more = scheduler.tick()
        assert not more
        assert flag_store.get_state(FLAG, ENV).rollout == expected
        assert scheduler.tick() == []  # nothing applied twice
    clock.advance(minutes=30)
    (after, _step), *_ = scheduler.tick()
    assert after.status is PlanStatus.COMPLETED
    rows = plan_rows(flag_store, plan.id)
    assert [(r.action, r.after.get("rollout")) for r in rows] == [
        ("state.update", 0),
        ("state.update", 5),
        ("state.update", 25),
        ("state.update", 50),
        ("state.update", 100),
        ("plan.complete", None),
    ]
    clock.advance(days=1)
    assert scheduler.tick() == []


def test_scheduler__guard_breach_mid_plan__kills_and_rolls_back_with_measured_values(
    plan_store: PlanStore,
    scheduler: PlanScheduler,
    flag_store: SqlFlagStore,
    metrics: InMemoryMetrics,
    clock: FakeClock,
) -> None:
    """At 25% the L2 cache starts returning corrupt entries: the flag is killed at once,
    the plan is rolled back with the numbers, and nothing advances after that."""
    plan = plan_store.create(FLAG, parse_plan(five_stages("30m")), actor="alice")
    clock.advance(minutes=30)
    scheduler.tick()  # 5%
    metrics.add(FLAG, ENV, clock(), reads=1000, corrupt_reads=2)  # 0.2%: healthy
    clock.advance(minutes=30)
    scheduler.tick()  # 25%; the earlier reads are outside the new hold's window
    # When
    clock.advance(minutes=10)
    metrics.add(FLAG, ENV, clock(), reads=400, corrupt_reads=37)
    metrics.add("other.flag", ENV, clock(), reads=1, corrupt_reads=1)
    (after, _step), *_ = scheduler.tick()
    # Then
    assert after.status is PlanStatus.ROLLED_BACK
    assert "37 corrupt_reads / 400 reads" in (after.reason or "")
    assert "max 0.01" in (after.reason or "")
    state = flag_store.get_state(FLAG, ENV)
    assert state.killed
    assert state.killed_by == f"plan:{plan.id}"
    assert "37 corrupt_reads / 400 reads" in (state.kill_reason or "")
    assert state.rollout == 25
    rows = plan_rows(flag_store, plan.id)
    assert [r.action for r in rows[-2:]] == ["kill", "plan.rollback"]
    assert rows[-1].after["readings"][0]["corrupt_reads"] == 37
    # Nothing advances until a person acts
    clock.advance(days=1)
    assert scheduler.tick() == []
    assert flag_store.get_state(FLAG, ENV) == state


def test_scheduler__flag_killed_by_a_person__rolls_back_naming_them(
    plan_store: PlanStore, scheduler: PlanScheduler, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    plan = plan_store.create(FLAG, parse_plan(five_stages("30m")), actor="alice")
    flag_store.kill(FLAG, [ENV], reason="401s from integrations", actor="oncall")
    (after, _step), *_ = scheduler.tick()
    assert after.status is PlanStatus.ROLLED_BACK
    assert "by oncall: 401s from integrations" in (after.reason or "")
    assert [r.action for r in plan_rows(flag_store, plan.id)] == [
        "state.update",
        "plan.rollback",
    ]  # no second kill
    # A person acts: resume is refused while killed, then allowed after unkill
    with pytest.raises(PlanStateError):
        plan_store.resume(plan.id, actor="oncall")
    flag_store.unkill(FLAG, [ENV], reason="fixed", actor="oncall")
    plan_store.resume(plan.id, actor="oncall")
    clock.advance(minutes=30)
    (after, _step), *_ = scheduler.tick()
    assert (after.status, after.stage) == (PlanStatus.RUNNING, 1)


def test_scheduler__pause_resume_abort_advance__only_active_plans_move(
    plan_store: PlanStore, scheduler: PlanScheduler, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    plan = plan_store.create(FLAG, parse_plan(five_stages("30m")), actor="alice")
    # A paused plan stays where it is, however long
    plan_store.pause(plan.id, actor="bob")
    clock.advance(hours=5)
    assert scheduler.tick() == []
    assert plan_store.get(plan.id).stage == 0
    # Resume restarts the hold
    plan_store.resume(plan.id, actor="bob")
    clock.advance(minutes=29)
    assert scheduler.tick() == []
    clock.advance(minutes=1)
    assert [p.stage for p, _ in scheduler.tick()] == [1]
    # Advance skips the rest of the hold, and the scheduler counts the hold from then
    plan_store.advance(plan.id, actor="bob")
    assert flag_store.get_state(FLAG, ENV).rollout == 25
    clock.advance(minutes=29)
    assert scheduler.tick() == []
    # Abort ends it; the flag stays as it is
    plan_store.abort(plan.id, actor="bob", reason="enough")
    clock.advance(hours=5)
    assert scheduler.tick() == []
    assert flag_store.get_state(FLAG, ENV).rollout == 25
    assert plan_store.get(plan.id).status is PlanStatus.ABORTED


def test_scheduler__scheduled_change__applied_at_its_time_exactly_once(
    plan_store: PlanStore, scheduler: PlanScheduler, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    at = datetime(2026, 12, 1, 2, 0, tzinfo=clock().tzinfo)
    spec = parse_schedule(
        {"environment": ENV, "at": "2026-12-01T02:00:00Z", "change": {"enabled": True}},
        now=clock(),
    )
    plan = plan_store.create(FLAG, spec, actor="alice")
    assert plan.status is PlanStatus.PENDING
    clock.advance(seconds=(at - clock()).total_seconds() - 1)
    assert scheduler.tick() == []
    assert not flag_store.get_state(FLAG, ENV).enabled
    clock.advance(seconds=1)
    (after, _step), *_ = scheduler.tick()
    assert after.status is PlanStatus.COMPLETED
    assert flag_store.get_state(FLAG, ENV).enabled
    assert scheduler.tick() == []
    assert [r.action for r in plan_rows(flag_store, plan.id)] == ["state.update", "plan.complete"]


class BrokenMetrics:
    def counter_totals(self, flag: str, environment: str, since: datetime) -> dict[str, float]:
        raise ConnectionError("telemetry down")


def test_scheduler__metrics_unreadable__plan_holds_instead_of_advancing(
    plan_store: PlanStore, flag_store: SqlFlagStore, clock: FakeClock
) -> None:
    """A guard that cannot be read never lets a plan advance (nor rolls it back)."""
    plan = plan_store.create(FLAG, parse_plan(five_stages("30m")), actor="alice")
    scheduler = PlanScheduler(plan_store, BrokenMetrics())
    clock.advance(hours=2)
    assert scheduler.tick() == []
    assert plan_store.get(plan.id).stage == 0
    assert plan_store.get(plan.id).status is PlanStatus.RUNNING


def test_scheduler__started_as_a_service__advances_with_the_real_clock(
    flag_store: SqlFlagStore,
) -> None:
    """The thread ticks on its own: a plan of 0-second holds completes without help."""
    plans = PlanStore(flag_store)
    plan = plans.create(FLAG, parse_plan(five_stages("0s")), actor="alice")
    with PlanScheduler(plans, InMemoryMetrics(), interval=0.02):
        wait_for(lambda: plans.get(plan.id).status is PlanStatus.COMPLETED, timeout=20)
    assert flag_store.get_state(FLAG, ENV).rollout == 100


@pytest.mark.postgres
def test_scheduler__two_on_one_postgres__only_the_lock_holder_acts(
    postgres_url: str,
) -> None:
    """Two schedulers on one PostgreSQL database: one leads; when it closes, the other does."""
    store = SqlFlagStore(postgres_url)
    store.create_flag(FLAG, actor="test")
    clock = FakeClock()
    plans = PlanStore(store, clock=clock)
    plan = plans.create(FLAG, parse_plan(five_stages("1m")), actor="alice")
    first = PlanScheduler(plans, InMemoryMetrics())
    second = PlanScheduler(plans, InMemoryMetrics())
    try:
        clock.advance(minutes=1)
        assert len(first.tick()) == 1
        clock.advance(minutes=1)
        assert second.tick() == []
        assert (first.is_leader, second.is_leader) == (True, False)
        # When the leader goes away
        first.close()
        # Then the other takes over on its next tick
        assert len(second.tick()) == 1
        assert plans.get(plan.id).stage == 2
    finally:
        first.close()
        second.close()
        store.close()
