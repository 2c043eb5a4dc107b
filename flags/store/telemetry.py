"""What SDKs report back: live instances, evaluation counts, app-named counters.

Three tables (defined in ``flags.store.tables``, created by ``migrations/versions/0002_sdk.py``):

* ``sdk_instances``: one row per SDK instance (``instance_id``), with the
  environment version it applied and when it was last heard from. The base of
  kill confirmation and ``GET /admin/environments/{env}/clients``.
* ``sdk_flag_evaluations``: per flag and environment, running totals of
  evaluations that came out on and off, whether each was ever seen, and
  ``last_evaluated_at``. The base of ``GET /admin/flags/{key}`` telemetry and of
  the unused-flag report.
* ``sdk_counters``: per flag, environment and counter name, the sum reported in
  each one-second bucket (rows are upserted, so many instances reporting in the
  same second add up in one row). ``evaluations_on`` / ``evaluations_off`` are
  recorded here as well, so ``counter_totals`` answers for a time window.

Every method runs in its own transaction; driver errors become
``StoreUnavailableError``. Thread-safe (each call takes a pooled connection).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    delete,
    func,
    or_,
    select,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from flags.errors import FlagrailError, StoreUnavailableError
from flags.model import InstanceReport
from flags.store import tables as core
from flags.store.tables import sdk_counters, sdk_flag_evaluations, sdk_instances

__all__ = [
    "EVALUATIONS_OFF",
    "EVALUATIONS_ON",
    "TelemetryStore",
    "sdk_counters",
    "sdk_flag_evaluations",
    "sdk_instances",
]

EVALUATIONS_ON = "evaluations_on"
EVALUATIONS_OFF = "evaluations_off"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat() if value is not None else None


def live_window(interval: float) -> float:
    """Seconds an instance counts as live after its last report: three intervals, at least 5 s."""
    return max(5.0, 3.0 * interval)


class TelemetryStore:
    """SDK telemetry on the flag store's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name

    # ---------------------------------------------------------------- plumbing
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(flagrail_write=True)
                with conn.begin():
                    yield conn
        except FlagrailError:
            raise
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StoreUnavailableError(f"database error: {type(exc).__name__}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except FlagrailError:
            raise
        except (DBAPIError, SQLAlchemyError) as exc:
            raise StoreUnavailableError(f"database error: {type(exc).__name__}") from exc

    def _insert(self, table: Table) -> Any:
        if self._dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def _greatest(self, a: Any, b: Any) -> Any:
        return func.greatest(a, b) if self._dialect == "postgresql" else func.max(a, b)

    # ---------------------------------------------------------------- writes
    def record_metrics(
        self,
        environment: str,
        evaluations: Mapping[str, tuple[int, int]],
        counters: Mapping[str, Mapping[str, float]] | None = None,
        *,
        at: datetime | None = None,
    ) -> None:
        """Add one SDK report: ``evaluations`` is ``{flag: (off, on)}`` since its last
        report, ``counters`` ``{flag: {name: amount}}``. Zero entries are skipped.

        Raises ``StoreUnavailableError``.
        """
        at = _utc(at) or datetime.now(UTC)
        bucket = at.replace(microsecond=0)
        eval_rows = []
        counter_rows: dict[tuple[str, str], float] = {}
        for flag, (off, on) in evaluations.items():
            if off <= 0 and on <= 0:
                continue
            eval_rows.append(
                {
                    "flag_key": flag,
                    "environment": environment,
                    "evaluations_on": max(on, 0),
                    "evaluations_off": max(off, 0),
                    "seen_on": on > 0,
                    "seen_off": off > 0,
                    "first_evaluated_at": at,
                    "last_evaluated_at": at,
                }
            )
            if on > 0:
                counter_rows[(flag, EVALUATIONS_ON)] = float(on)
            if off > 0:
                counter_rows[(flag, EVALUATIONS_OFF)] = float(off)
        for flag, named in (counters or {}).items():
            for name, amount in named.items():
                if amount:
                    key = (flag, name)
                    counter_rows[key] = counter_rows.get(key, 0.0) + float(amount)
        if not eval_rows and not counter_rows:
            return
        with self._write() as conn:
            if eval_rows:
                stmt = self._insert(sdk_flag_evaluations)
                ex, t = stmt.excluded, sdk_flag_evaluations.c
                stmt = stmt.on_conflict_do_update(
                    index_elements=[t.flag_key, t.environment],
                    set_={
                        "evaluations_on": t.evaluations_on + ex.evaluations_on,
                        "evaluations_off": t.evaluations_off + ex.evaluations_off,
                        "seen_on": or_(t.seen_on, ex.seen_on),
                        "seen_off": or_(t.seen_off, ex.seen_off),
                        "last_evaluated_at": self._greatest(
                            t.last_evaluated_at, ex.last_evaluated_at
                        ),
                    },
                )
                for row in sorted(eval_rows, key=lambda r: r["flag_key"]):
                    conn.execute(stmt, row)
            if counter_rows:
                stmt = self._insert(sdk_counters)
                c = sdk_counters.c
                stmt = stmt.on_conflict_do_update(
                    index_elements=[c.flag_key, c.environment, c.name, c.bucket_at],
                    set_={"value": c.value + stmt.excluded.value},
                )
                for (flag, name), amount in sorted(counter_rows.items()):
                    conn.execute(
                        stmt,
                        {
                            "flag_key": flag,
                            "environment": environment,
                            "name": name,
                            "bucket_at": bucket,
                            "value": amount,
                        },
                    )

    def record_instances(self, reports: Sequence[tuple[InstanceReport, datetime]]) -> None:
        """Upsert instance reports with the time each was heard. A later report of the
        same instance wins; an earlier one (an out-of-order flush) is ignored."""
        if not reports:
            return
        latest: dict[str, tuple[InstanceReport, datetime]] = {}
        for report, seen in reports:
            held = latest.get(report.instance_id)
            if held is None or seen >= held[1]:
                latest[report.instance_id] = (report, seen)
        with self._write() as conn:
            stmt = self._insert(sdk_instances)
            ex, t = stmt.excluded, sdk_instances.c
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.instance_id],
                set_={
                    "environment": ex.environment,
                    "applied_version": ex.applied_version,
                    "report_interval": ex.report_interval,
                    "closed": ex.closed,
                    "last_seen_at": ex.last_seen_at,
                    "app": ex.app,
                },
                where=t.last_seen_at <= ex.last_seen_at,
            )
            for instance_id in sorted(latest):
                report, seen = latest[instance_id]
                conn.execute(
                    stmt,
                    {
                        "instance_id": report.instance_id,
                        "environment": report.environment,
                        "host": report.host,
                        "pid": report.pid,
                        "app": report.app,
                        "applied_version": report.applied_version,
                        "report_interval": report.interval,
                        "closed": report.closed,
                        "last_seen_at": _utc(seen),
                    },
                )

    def prune(self, before: datetime) -> int:
        """Delete counter buckets and instance rows older than ``before``; returns rows
        deleted. Evaluation totals are kept (they are what the unused report reads)."""
        with self._write() as conn:
            a = conn.execute(delete(sdk_counters).where(sdk_counters.c.bucket_at < before))
            b = conn.execute(delete(sdk_instances).where(sdk_instances.c.last_seen_at < before))
        return int(a.rowcount or 0) + int(b.rowcount or 0)

    # ---------------------------------------------------------------- reads
    def instances(
        self, environment: str, *, seen_since: datetime, include_closed: bool = False
    ) -> list[dict[str, Any]]:
        """Instances of ``environment`` heard from since ``seen_since`` (closed ones only
        with ``include_closed``), as ``{"instance_id", "host", "pid", "app",
        "applied_version", "last_seen_at" (datetime), "interval", "closed"}``.
        Liveness windows are the caller's business."""
        t = sdk_instances.c
        stmt = select(sdk_instances).where(
            t.environment == environment, t.last_seen_at >= seen_since
        )
        if not include_closed:
            stmt = stmt.where(t.closed.is_(False))
        with self._read() as conn:
            rows = conn.execute(stmt.order_by(t.instance_id)).all()
        return [
            {
                "instance_id": r.instance_id,
                "host": r.host,
                "pid": int(r.pid),
                "app": r.app,
                "applied_version": int(r.applied_version),
                "last_seen_at": _utc(r.last_seen_at),
                "interval": float(r.report_interval),
                "closed": bool(r.closed),
            }
            for r in rows
        ]

    def flag_environments(self, key: str) -> dict[str, dict[str, Any]]:
        """``{env: {"last_evaluated_at" (ISO-8601), "seen_on", "seen_off",
        "evaluations_on", "evaluations_off"}}`` for the environments where ``key`` was
        ever evaluated (as ``GET /admin/flags/{key}`` merges it into each state)."""
        t = sdk_flag_evaluations.c
        with self._read() as conn:
            rows = conn.execute(select(sdk_flag_evaluations).where(t.flag_key == key)).all()
        return {
            r.environment: {
                "last_evaluated_at": _iso(r.last_evaluated_at),
                "seen_on": bool(r.seen_on),
                "seen_off": bool(r.seen_off),
                "evaluations_on": int(r.evaluations_on),
                "evaluations_off": int(r.evaluations_off),
            }
            for r in rows
        }

    def counter_totals(self, flag: str, environment: str, since: datetime) -> dict[str, float]:
        """The sum of each named counter of ``flag`` in ``environment`` reported since
        ``since`` (one-second resolution: a bucket counts when it starts at or after
        ``since`` truncated to the second).

        Includes ``evaluations_on`` and ``evaluations_off`` when any were reported,
        and every app-named counter (``FlagClient.count(flag, name)``), e.g.
        ``{"evaluations_on": 1200.0, "reads": 5000.0, "corrupt_reads": 3.0}``.
        Names with nothing reported are absent. Raises ``StoreUnavailableError``.
        """
        since = (_utc(since) or datetime.now(UTC)).replace(microsecond=0)
        c = sdk_counters.c
        with self._read() as conn:
            rows = conn.execute(
                select(c.name, func.sum(c.value))
                .where(and_(c.flag_key == flag, c.environment == environment, c.bucket_at >= since))
                .group_by(c.name)
            ).all()
        return {name: float(total or 0.0) for name, total in rows}

    def unused(
        self, since: datetime, *, scope: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Live (non-archived) flags created before ``since`` that no SDK evaluated since
        ``since`` in any environment of ``scope`` (None: every environment), by key:
        ``{"key", "kind", "owner", "created_at", "last_evaluated_at"}``, the last being
        None for a flag never evaluated there. Raises ``StoreUnavailableError``."""
        since = _utc(since) or datetime.now(UTC)
        f, e = core.flags.c, sdk_flag_evaluations.c
        last = select(e.flag_key, func.max(e.last_evaluated_at).label("last"))
        if scope is not None:
            last = last.where(e.environment.in_(list(scope)))
        last_sq = last.group_by(e.flag_key).subquery()
        stmt = (
            select(f.key, f.kind, f.owner, f.created_at, last_sq.c.last)
            .select_from(core.flags.outerjoin(last_sq, last_sq.c.flag_key == f.key))
            .where(
                f.archived.is_(False),
                f.created_at < since,
                or_(last_sq.c.last.is_(None), last_sq.c.last < since),
            )
            .order_by(f.key)
        )
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [
            {
                "key": r.key,
                "kind": r.kind,
                "owner": r.owner,
                "created_at": _iso(r.created_at),
                "last_evaluated_at": _iso(r.last),
            }
            for r in rows
        ]
