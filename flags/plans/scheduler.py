"""PlanScheduler: the service inside the server that moves plans along.

Every ``interval`` seconds (0.5 by default: a plan is looked at at least once a
second) the scheduler reads the pending and running plans, observes each one's
flag and guard metrics, asks ``next_action`` what to do, and has ``PlanStore``
do it in one transaction.

On PostgreSQL only one replica acts at a time: the leader holds the session-level
advisory lock ``LOCK_KEY`` on a dedicated connection (``pg_try_advisory_lock``);
when its process dies the session ends and another replica takes the lock on its
next tick. Even if two ever acted at once (a leader cut off from the database
while its session lingers), the compare-and-set of ``PlanStore.execute`` lets
only one of them apply a stage. On SQLite (one process) it simply runs.

A plan whose observation fails (metrics source or database down) is skipped for
that tick: it holds where it is, it never advances without its guards read.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from flags.errors import FlagrailError
from flags.plans.model import (
    Observation,
    Plan,
    PlanKind,
    PlanStatus,
    RollBack,
    Step,
    Wait,
    guard_since,
    measure,
    next_action,
)
from flags.plans.store import Clock, PlanStore
from flags.store.telemetry import TelemetryStore

__all__ = [
    "DEFAULT_INTERVAL",
    "LOCK_KEY",
    "InMemoryMetrics",
    "MetricsSource",
    "NoMetrics",
    "PlanScheduler",
    "default_metrics",
]

log = logging.getLogger("flagrail.plans")

DEFAULT_INTERVAL = 0.5
# pg_advisory_lock key of the plan scheduler ("flagrail" in ASCII as a 64-bit number).
# Advisory locks are per database, so deployments on separate databases never meet.
LOCK_KEY = 0x666C61677261696C


class MetricsSource(Protocol):
    """Where guards read what SDKs report (``TelemetryStore`` in the server)."""

    def counter_totals(self, flag: str, environment: str, since: datetime) -> dict[str, float]:
        """Sums of every named counter reported for ``flag`` in ``environment`` since
        ``since``, e.g. ``{"reads": 1000, "corrupt_reads": 3}``. May raise."""
        ...


class NoMetrics:
    """A source with no data: rate guards never breach, raw counts read 0."""

    def counter_totals(self, flag: str, environment: str, since: datetime) -> dict[str, float]:
        return {}


@dataclass
class InMemoryMetrics:
    """A ``MetricsSource`` for tests and examples: ``add`` counters at a time.

    Thread-safe.
    """

    _points: dict[tuple[str, str], list[tuple[datetime, dict[str, float]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, flag: str, environment: str, at: datetime, **counters: float) -> None:
        with self._lock:
            self._points[(flag, environment)].append((at, dict(counters)))

    def counter_totals(self, flag: str, environment: str, since: datetime) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        with self._lock:
            for at, counters in self._points.get((flag, environment), ()):
                if at >= since:
                    for name, value in counters.items():
                        totals[name] += value
        return dict(totals)


def default_metrics(engine: Engine) -> MetricsSource:
    """What SDKs report through ``POST /sdk/v1/metrics``: ``TelemetryStore`` on ``engine``."""
    return TelemetryStore(engine)


class PlanScheduler:
    """Advances plans; a service with ``start()`` / ``close()`` for ``create_app``.

    ``tick()`` does one pass and may be called directly (tests drive it with a
    fake clock and no thread). Constructing it does no I/O.
    """

    def __init__(
        self,
        plans: PlanStore,
        metrics: MetricsSource | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Clock | None = None,
    ) -> None:
        self.plans = plans
        self.metrics: MetricsSource = metrics if metrics is not None else NoMetrics()
        self.interval = interval
        self.clock = clock or plans.clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_engine: Engine | None = None
        self._lock_conn: Connection | None = None
        self.ticks = 0

    # ------------------------------------------------------------ service
    def start(self) -> None:
        """Start ticking in a daemon thread (the first tick at once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="flagrail-plans", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop ticking, wait for the current tick, and give up the leader lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._release()

    def __enter__(self) -> PlanScheduler:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad tick; logged with traceback
                log.exception("plan scheduler tick failed")
            self._stop.wait(self.interval)

    # ------------------------------------------------------------ leadership
    @property
    def is_leader(self) -> bool:
        return not self.plans.flags.is_postgres or self._lock_conn is not None

    def _lead(self) -> bool:
        """True when this process may act: always on SQLite; on PostgreSQL while it
        holds the advisory lock on its own live session."""
        if not self.plans.flags.is_postgres:
            return True
        if self._lock_conn is not None:
            try:
                self._lock_conn.execute(text("SELECT 1"))
                return True
            except SQLAlchemyError:
                log.warning("plan scheduler lost its database session; leadership dropped")
                self._release()
        try:
            if self._lock_engine is None:
                self._lock_engine = create_engine(self.plans.flags.engine.url, poolclass=NullPool)
            conn = self._lock_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            log.warning("plan scheduler cannot reach the database: %s", type(exc).__name__)
            return False
        try:
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar()
            )
        except SQLAlchemyError:
            conn.close()
            return False
        if not got:
            conn.close()
            return False
        log.info("plan scheduler is the leader")
        self._lock_conn = conn
        return True

    def _release(self) -> None:
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            except SQLAlchemyError:
                pass  # the session is gone, and the lock with it
            finally:
                conn.close()
        if self._lock_engine is not None:
            self._lock_engine.dispose()
            self._lock_engine = None

    # ------------------------------------------------------------ one pass
    def observe(self, plan: Plan, now: datetime) -> Observation:
        """The flag's kill and archive state, and (running plans) every guard's reading.

        Raises whatever the store or the metrics source raises.
        """
        record = self.plans.flags.get_flag(plan.flag, scope=[plan.environment])
        state = record.states.get(plan.environment)
        readings = []
        if plan.kind is PlanKind.PLAN and plan.status is PlanStatus.RUNNING:
            for guard in plan.guards:
                since = guard_since(plan, guard, now)
                totals: Mapping[str, float] = self.metrics.counter_totals(
                    guard.flag, plan.environment, since
                )
                readings.append(measure(guard, totals, since))
        return Observation(
            readings=tuple(readings),
            killed=bool(state and state.killed),
            kill_reason=state.kill_reason if state else None,
            killed_by=state.killed_by if state else None,
            archived=record.flag.archived,
        )

    def attribute(self, plan: Plan, step: RollBack) -> RollBack:
        """``step`` with its reason naming who reported the breaching counters: the
        instances and tokens, largest first (``counter_sources`` of a metrics source
        that has it, e.g. ``TelemetryStore``), e.g. ``; errors reported by instance
        i-7 of token sdk (tok_1): 1000``. Unchanged when the source cannot tell."""
        sources = getattr(self.metrics, "counter_sources", None)
        if sources is None:
            return step
        parts = []
        for reading in step.readings:
            numerator, _denominator = reading.guard.counters
            try:
                who = sources(reading.guard.flag, plan.environment, numerator, reading.since)
            except Exception:  # attribution is a courtesy: never let it stop a rollback
                log.exception("plan %s: cannot attribute %s", plan.id, numerator)
                continue
            if who:
                parts.append(
                    f"{numerator} reported by "
                    + ", ".join(
                        f"instance {w['instance_id'] or '(none)'} of token {w['token']}: "
                        f"{w['count']:g}"
                        for w in who
                    )
                )
        if not parts:
            return step
        return replace(step, reason=f"{step.reason}; {'; '.join(parts)}")

    def tick(self) -> list[tuple[Plan, Step]]:
        """One pass over the active plans; returns the (plan after, step) of each step taken.

        Does nothing unless this process leads. A plan that fails is logged and
        skipped; the others still run.
        """
        self.ticks += 1
        if not self._lead():
            return []
        now = self.clock()
        try:
            active = self.plans.active()
        except FlagrailError as exc:
            log.warning("plan scheduler cannot read plans: %s", exc)
            return []
        taken: list[tuple[Plan, Step]] = []
        for plan in active:
            try:
                step = next_action(plan, now, self.observe(plan, now))
                if isinstance(step, Wait):
                    continue
                if isinstance(step, RollBack) and step.readings:
                    step = self.attribute(plan, step)
                after = self.plans.execute(plan, step, now=now)
            except FlagrailError as exc:
                log.warning("plan %s: step skipped: %s", plan.id, exc)
                continue
            except Exception:  # a metrics source is foreign code; one plan must not stop others
                log.exception("plan %s: step failed", plan.id)
                continue
            if after is not None:
                log.info("plan %s: %s -> %s", plan.id, type(step).__name__, after.status.value)
                taken.append((after, step))
        return taken
