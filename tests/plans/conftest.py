"""Fixtures of the plan tests: a fake clock, a flag store with one flag, plans, a scheduler."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from plan_support import FLAG, FakeClock

from flags.plans.scheduler import InMemoryMetrics, PlanScheduler
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def flag_store(database_url: str) -> Iterator[SqlFlagStore]:
    """A store on this test's own database, holding flag ``auth.cache.l2``."""
    store = SqlFlagStore(database_url)
    store.create_flag(FLAG, kind="operational", actor="test")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def plan_store(flag_store: SqlFlagStore, clock: FakeClock) -> PlanStore:
    return PlanStore(flag_store, clock=clock)


@pytest.fixture
def metrics() -> InMemoryMetrics:
    return InMemoryMetrics()


@pytest.fixture
def scheduler(plan_store: PlanStore, metrics: InMemoryMetrics) -> Iterator[PlanScheduler]:
    """A scheduler driven by hand (``tick()``), never started as a thread."""
    sched = PlanScheduler(plan_store, metrics)
    try:
        yield sched
    finally:
        sched.close()
