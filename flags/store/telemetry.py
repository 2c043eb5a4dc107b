"""What SDKs report back: live instances, evaluation counts, app-named counters.

Three tables (defined in ``flags.store.tables``, created by ``migrations/versions/0002_sdk.py``):

* ``sdk_instances``: one row per SDK instance (``instance_id``), with the
  environment version it applied and when it was last heard from. The base of
  kill confirmation and ``GET /admin/environments/{env}/clients``.
* ``sdk_flag_evaluations``: per flag and environment, running totals of
  evaluations that came out on and off, whether each was ever seen, and
  ``last_evaluated_at``. The base of ``GET /admin/flags/{key}`` telemetry and of
  the unused-flag report.
* ``sdk_counters``: per flag, environment, counter name and token, the sum reported
  in each one-second bucket (rows are upserted, so many instances of one token
  reporting in the same second add up in one row). ``evaluations_on`` /
  ``evaluations_off`` are recorded here as well, so ``counter_totals`` answers for a
  time window.

Ownership (``0008_telemetry_tokens``): an instance row's ``token_id`` is the token
that first reported it, and ``claim_instance`` checks it in the database, so every
replica refuses another token's report for it, whichever replica saw it first. A
NULL owner (a row from before 0008) is claimed by the first token that reports the
instance after the upgrade. Counter rows carry the reporting token's id (``""``:
from before 0008), so ``counter_sources`` names the tokens behind a counter whatever
replica heard them.

Retention (``apply_retention``, run on a schedule by ``TelemetryRetention``):
counter buckets older than the retention are deleted, buckets older than the
roll-up age are merged into one bucket per hour and token (so a steady report rate yields
a bounded table: per-second rows for the roll-up age, hourly rows for the rest),
and instance rows not heard from for a day are deleted.

Every method runs in its own transaction; driver errors become
``StoreUnavailableError``. Thread-safe (each call takes a pooled connection).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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

from flags.background import Background
from flags.errors import (
    FlagrailError,
    ForbiddenError,
    StoreUnavailableError,
    ValidationError,
)
from flags.model import InstanceReport
from flags.store import tables as core
from flags.store.tables import sdk_counters, sdk_flag_evaluations, sdk_instances
from flags.store.writes import write_transaction

__all__ = [
    "EVALUATIONS_OFF",
    "EVALUATIONS_ON",
    "INSTANCE_ROW_RETENTION",
    "Reporter",
    "RetentionResult",
    "TelemetryRetention",
    "TelemetryStore",
    "sdk_counters",
    "sdk_flag_evaluations",
    "sdk_instances",
]

EVALUATIONS_ON = "evaluations_on"
EVALUATIONS_OFF = "evaluations_off"
# Instance rows not heard from for this long are deleted (they are long dead).
INSTANCE_ROW_RETENTION = timedelta(days=1)

log = logging.getLogger("flagrail.telemetry")


def _hour(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


# The longest live window (report intervals are at most an hour): rows older than
# this cannot be live, whatever their interval.
MAX_LIVE_WINDOW = timedelta(hours=3)
# How long a replica trusts an instance owner it read from (or wrote to) the
# database before reading it again. Owners never change while a row exists; a row is
# deleted only after INSTANCE_ROW_RETENTION of silence, far beyond this.
OWNER_CACHE_SECONDS = 60.0
MAX_CACHED_OWNERS = 200_000
# At most this many instance ids are named per token when a counter's source is
# known only from the database (another replica heard the report).
NAMED_INSTANCES = 3

# Attribution kept in memory per counter: the latest reports, for this long.
SOURCE_HORIZON = timedelta(hours=6)
MAX_SOURCES_PER_COUNTER = 1_000
MAX_SOURCE_COUNTERS = 100_000


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who sent a report: the token (``"name (id)"``), the instance if it named one,
    and the token's id (what ``sdk_counters.token_id`` records; None: ``""``)."""

    token: str
    instance_id: str | None = None
    token_id: str | None = None


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one ``apply_retention`` run did (row counts)."""

    pruned: int
    rolled_up: int
    instances_pruned: int


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

    def __init__(
        self, engine: Engine, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.engine = engine
        # When a report without ``at`` is recorded (injectable for retention tests).
        self.clock = clock
        self._dialect = engine.dialect.name
        # (env, flag, name) -> recent (at, reporter, amount): who reported each counter.
        self._sources: dict[tuple[str, str, str], deque[tuple[datetime, Reporter, float]]] = {}
        self._sources_lock = threading.Lock()
        # instance_id -> (owner, environment, monotonic time read): see claim_instance.
        self._owners: dict[str, tuple[str, str, float]] = {}
        self._owners_lock = threading.Lock()

    # ---------------------------------------------------------------- plumbing
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        try:
            with write_transaction(self.engine) as conn:
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
        reporter: Reporter | None = None,
    ) -> None:
        """Add one SDK report: ``evaluations`` is ``{flag: (off, on)}`` since its last
        report, ``counters`` ``{flag: {name: amount}}``. Zero entries are skipped.

        Counter rows are kept per token (``reporter.token_id``; ``""`` without one),
        in the database, so ``counter_sources`` names the tokens on any replica. With
        ``reporter``, the app-named counters are also attributed to its instance in
        this process's memory (the latest ``MAX_SOURCES_PER_COUNTER`` reports of each
        counter within ``SOURCE_HORIZON``), which names instances exactly when this
        replica heard every report. Raises ``StoreUnavailableError``.
        """
        token_id = (reporter.token_id if reporter is not None else None) or ""
        at = _utc(at) or self.clock()
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
                    index_elements=[c.flag_key, c.environment, c.name, c.bucket_at, c.token_id],
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
                            "token_id": token_id,
                            "value": amount,
                        },
                    )
        if reporter is not None and counter_rows:
            self._attribute(environment, counter_rows, at, reporter)

    def _attribute(
        self,
        environment: str,
        rows: Mapping[tuple[str, str], float],
        at: datetime,
        reporter: Reporter,
    ) -> None:
        with self._sources_lock:
            for (flag, name), amount in rows.items():
                key = (environment, flag, name)
                held = self._sources.get(key)
                if held is None:
                    if len(self._sources) >= MAX_SOURCE_COUNTERS:
                        continue
                    held = self._sources[key] = deque(maxlen=MAX_SOURCES_PER_COUNTER)
                held.append((at, reporter, amount))
                while held and held[0][0] < at - SOURCE_HORIZON:
                    held.popleft()

    def counter_sources(
        self, flag: str, environment: str, name: str, since: datetime, *, limit: int = 10
    ) -> list[dict[str, Any]]:
        """Who reported counter ``name`` of ``flag`` since ``since``:
        ``[{"token", "instance_id", "count"}]``, largest first, at most ``limit``.

        The tokens and their sums come from the database (every replica's reports).
        ``token`` is ``"name (id)"`` (``"(unattributed)"`` for rows from before 0008).
        Instances: where this replica heard all of a token's reports, each instance
        with its own count (from memory); otherwise the token's remainder is one entry
        whose ``instance_id`` lists the instances that token reported in
        ``environment`` since ``since`` (at most ``NAMED_INSTANCES``, then ``+N more``;
        None when it named none). Raises ``StoreUnavailableError``.
        """
        since = (_utc(since) or self.clock()).replace(microsecond=0)
        c, t, i = sdk_counters.c, core.tokens.c, sdk_instances.c
        with self._read() as conn:
            totals = conn.execute(
                select(c.token_id, func.sum(c.value), t.name)
                .select_from(sdk_counters.outerjoin(core.tokens, t.id == c.token_id))
                .where(
                    c.flag_key == flag,
                    c.environment == environment,
                    c.name == name,
                    c.bucket_at >= since,
                )
                .group_by(c.token_id, t.name)
            ).all()
            remote: dict[str, tuple[list[str], int]] = {}
            heard = self._heard(environment, flag, name, since)
            for token_id, total, _token_name in totals:
                mine = sum(v for r, v in heard.items() if (r.token_id or "") == token_id)
                if token_id and mine + 1e-9 < float(total or 0.0):
                    theirs = and_(
                        i.token_id == token_id,
                        i.environment == environment,
                        i.last_seen_at >= since,
                    )
                    ids = conn.execute(
                        select(i.instance_id)
                        .where(theirs)
                        .order_by(i.instance_id)
                        .limit(NAMED_INSTANCES)
                    ).scalars()
                    count = conn.execute(select(func.count()).where(theirs)).scalar_one()
                    remote[token_id] = (list(ids), int(count))
        out: list[tuple[float, str, str | None]] = []
        for token_id, total, token_name in totals:
            total = float(total or 0.0)
            if not token_id:
                out.append((total, "(unattributed)", None))
                continue
            label = f"{token_name} ({token_id})" if token_name is not None else token_id
            entries = {r: v for r, v in heard.items() if (r.token_id or "") == token_id}
            for reporter, amount in entries.items():
                out.append((amount, label, reporter.instance_id))
            rest = total - sum(entries.values())
            if rest > 1e-9:
                ids, count = remote.get(token_id, ([], 0))
                named = ", ".join(ids)
                if count > len(ids):
                    named += f" +{count - len(ids)} more"
                out.append((rest, label, named or None))
        out.sort(key=lambda e: (-e[0], e[1], e[2] or ""))
        return [
            {"token": token, "instance_id": instance_id, "count": count}
            for count, token, instance_id in out[:limit]
            if count > 0
        ]

    def _heard(
        self, environment: str, flag: str, name: str, since: datetime
    ) -> dict[Reporter, float]:
        """This process's reports of one counter since ``since``, summed per reporter."""
        sums: dict[Reporter, float] = {}
        with self._sources_lock:
            for at, reporter, amount in self._sources.get((environment, flag, name), ()):
                if at >= since:
                    sums[reporter] = sums.get(reporter, 0.0) + amount
        return sums

    # ---------------------------------------------------------------- instances
    def claim_instance(
        self,
        report: InstanceReport,
        owner: str,
        *,
        at: datetime | None = None,
        max_per_token: int | None = None,
    ) -> bool:
        """Check, in the database, that the token ``owner`` may report ``report``, and
        make it the owner of a new (or unowned, pre-0008) instance.

        The first token that reported an instance owns it on every replica. Returns
        False (nothing written) when ``owner`` already holds ``max_per_token`` live
        instances and this one is new to it. Raises ``ForbiddenError`` (field
        ``instance_id``) when another token owns the instance, ``ValidationError``
        (field ``environment``) when it would move to another environment,
        ``StoreUnavailableError``. A new instance's row is written at once (later
        reports reach the row through ``record_instances``).

        An owner read here is trusted for ``OWNER_CACHE_SECONDS`` (then read again), so
        a steady reporter costs one query a minute. Under concurrent first reports of
        one new instance on two replicas, one insert wins and the other is refused; the
        per-token cap may be exceeded by the reports racing it. Thread-safe.
        """
        at = _utc(at) or self.clock()
        cached = self._cached_owner(report.instance_id)
        if cached is None:
            cached = self._claim_in_db(report, owner, at, max_per_token)
            if cached is None:
                return False
            self._cache_owner(report.instance_id, *cached)
        held_owner, held_env = cached
        if held_owner != owner:
            raise ForbiddenError(
                f"instance {report.instance_id!r} belongs to another token", field="instance_id"
            )
        if held_env != report.environment:
            raise ValidationError(
                f"instance {report.instance_id!r} reports for environment {held_env!r}; "
                f"it cannot move to {report.environment!r}",
                field="environment",
            )
        return True

    def owner_known(self, instance_id: str) -> bool:
        """True when ``claim_instance`` for this instance needs no database read now
        (its owner is cached); no I/O."""
        return self._cached_owner(instance_id) is not None

    def _cached_owner(self, instance_id: str) -> tuple[str, str] | None:
        with self._owners_lock:
            held = self._owners.get(instance_id)
            if held is None or time.monotonic() - held[2] > OWNER_CACHE_SECONDS:
                return None
            return held[0], held[1]

    def _cache_owner(self, instance_id: str, owner: str, environment: str) -> None:
        with self._owners_lock:
            if len(self._owners) >= MAX_CACHED_OWNERS:
                self._owners.clear()  # a re-read costs one query per instance
            self._owners[instance_id] = (owner, environment, time.monotonic())

    def _claim_in_db(
        self, report: InstanceReport, owner: str, at: datetime, max_per_token: int | None
    ) -> tuple[str, str] | None:
        """``(owner, environment)`` of the instance's row after claiming it for ``owner``
        if it had none; None when ``owner`` is at its cap."""
        t = sdk_instances.c
        with self._write() as conn:
            row = conn.execute(
                select(t.token_id, t.environment).where(t.instance_id == report.instance_id)
            ).first()
            if row is not None and row.token_id is not None:
                return str(row.token_id), str(row.environment)
            if max_per_token is not None and self._at_cap(conn, owner, at, max_per_token):
                return None
            if row is not None:  # pre-0008 and unowned: the first token claims it
                conn.execute(
                    sdk_instances.update()
                    .where(t.instance_id == report.instance_id, t.token_id.is_(None))
                    .values(token_id=owner)
                )
            else:
                stmt = self._insert(sdk_instances).on_conflict_do_nothing(
                    index_elements=[t.instance_id]
                )
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
                        "last_seen_at": at,
                        "token_id": owner,
                    },
                )
            row = conn.execute(
                select(t.token_id, t.environment).where(t.instance_id == report.instance_id)
            ).one()
        return str(row.token_id), str(row.environment)

    def _at_cap(self, conn: Connection, owner: str, at: datetime, cap: int) -> bool:
        """Whether ``owner`` holds ``cap`` or more open instances live at ``at``."""
        t = sdk_instances.c
        recent = and_(
            t.token_id == owner, t.closed.is_(False), t.last_seen_at >= at - MAX_LIVE_WINDOW
        )
        bound = int(conn.execute(select(func.count()).where(recent)).scalar_one())
        if bound < cap:
            return False
        # Exact only when it matters: some rows may be past their own (shorter) window.
        rows = conn.execute(select(t.last_seen_at, t.report_interval).where(recent))
        live = sum(
            1
            for seen, interval in rows
            if (at - (_utc(seen) or at)).total_seconds() <= live_window(float(interval))
        )
        return live >= cap

    def instance_tokens(self, instance_ids: Sequence[str]) -> dict[str, dict[str, str | None]]:
        """``{instance_id: {"token_id", "token_name"}}`` of the given instances that have
        a row (both None for a pre-0008 unowned one; ``token_name`` None for a token
        since deleted). Raises ``StoreUnavailableError``."""
        ids = sorted(set(instance_ids))
        i, t = sdk_instances.c, core.tokens.c
        out: dict[str, dict[str, str | None]] = {}
        with self._read() as conn:
            for start in range(0, len(ids), 500):  # bounded IN lists for any fleet size
                rows = conn.execute(
                    select(i.instance_id, i.token_id, t.name)
                    .select_from(sdk_instances.outerjoin(core.tokens, t.id == i.token_id))
                    .where(i.instance_id.in_(ids[start : start + 500]))
                ).all()
                for r in rows:
                    out[r.instance_id] = {"token_id": r.token_id, "token_name": r.name}
        return out

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
            # An instance keeps the environment of its first row: a later report for
            # another environment (another replica's, a forged one) does not move it.
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.instance_id],
                set_={
                    "applied_version": ex.applied_version,
                    "report_interval": ex.report_interval,
                    "closed": ex.closed,
                    "last_seen_at": ex.last_seen_at,
                    "app": ex.app,
                },
                where=and_(t.last_seen_at <= ex.last_seen_at, t.environment == ex.environment),
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

    def rollup(self, before: datetime, *, after: datetime | None = None) -> int:
        """Merge the counter buckets of each whole hour before ``before`` (truncated to
        the hour), and from ``after`` on if given, into one bucket per token at the
        start of the hour (each token's counts stay its own). Returns the rows removed
        (merged rows minus the hourly rows written). Sums are unchanged; a window that
        starts inside a rolled-up hour counts that hour only if the window starts at or
        before the hour's start.
        """
        cutoff = _hour(_utc(before) or datetime.now(UTC))
        c = sdk_counters.c
        stmt = select(c.flag_key, c.environment, c.name, c.token_id, c.bucket_at, c.value).where(
            c.bucket_at < cutoff
        )
        if after is not None:
            stmt = stmt.where(c.bucket_at >= _hour(_utc(after) or cutoff))
        removed = 0
        with self._write() as conn:
            groups: dict[tuple[str, str, str, str, datetime], list[float]] = {}
            aligned: set[tuple[str, str, str, str, datetime]] = set()
            for r in conn.execute(stmt):
                at = _utc(r.bucket_at)
                assert at is not None
                key = (r.flag_key, r.environment, r.name, r.token_id, _hour(at))
                groups.setdefault(key, []).append(float(r.value))
                if at == key[4]:
                    aligned.add(key)
            for key in sorted(groups):
                values = groups[key]
                if len(values) == 1 and key in aligned:
                    continue  # already one hourly row
                flag, env, name, token_id, hour = key
                conn.execute(
                    delete(sdk_counters).where(
                        c.flag_key == flag,
                        c.environment == env,
                        c.name == name,
                        c.token_id == token_id,
                        c.bucket_at >= hour,
                        c.bucket_at < hour + timedelta(hours=1),
                    )
                )
                conn.execute(
                    sdk_counters.insert().values(
                        flag_key=flag,
                        environment=env,
                        name=name,
                        token_id=token_id,
                        bucket_at=hour,
                        value=sum(values),
                    )
                )
                removed += len(values) - 1
        return removed

    def apply_retention(
        self,
        now: datetime,
        retention: timedelta,
        rollup_after: timedelta,
        *,
        rolled_until: datetime | None = None,
    ) -> RetentionResult:
        """Delete counters older than ``retention``, roll up those older than
        ``rollup_after`` per hour (only hours from ``rolled_until`` on, when given: an
        earlier run's watermark), delete instance rows older than
        ``INSTANCE_ROW_RETENTION``. Raises ``StoreUnavailableError``."""
        now = _utc(now) or datetime.now(UTC)
        before = now - retention
        with self._write() as conn:
            pruned = conn.execute(delete(sdk_counters).where(sdk_counters.c.bucket_at < before))
            gone = conn.execute(
                delete(sdk_instances).where(
                    sdk_instances.c.last_seen_at < now - INSTANCE_ROW_RETENTION
                )
            )
        after = rolled_until - timedelta(hours=1) if rolled_until is not None else None
        rolled = self.rollup(now - rollup_after, after=after) if rollup_after < retention else 0
        return RetentionResult(int(pruned.rowcount or 0), rolled, int(gone.rowcount or 0))

    def counter_rows(self) -> int:
        """Rows in ``sdk_counters`` (for operators and retention tests)."""
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(sdk_counters)).scalar_one())

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


class TelemetryRetention:
    """The server's schedule for ``TelemetryStore.apply_retention``: a daemon thread
    ``flagrail-telemetry-retention`` runs it at start and every ``interval`` seconds.

    ``clock`` is injectable (tests drive ``run_once`` with a fake one). The loop
    survives any exception (logged, retried next interval). ``start``/``close`` follow
    the app's service protocol; ``close`` returns within a few seconds.
    """

    def __init__(
        self,
        telemetry: TelemetryStore,
        retention: timedelta,
        rollup_after: timedelta,
        *,
        interval: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.telemetry = telemetry
        self.retention = retention
        self.rollup_after = rollup_after
        self.interval = interval
        self.clock = clock
        self.runs = 0
        self.failures = 0
        self._rolled_until: datetime | None = None
        self._thread = Background("flagrail-telemetry-retention", self._run)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._thread.close()

    def run_once(self) -> RetentionResult:
        """Apply retention as of ``clock()`` now. Raises ``StoreUnavailableError``."""
        now = self.clock()
        result = self.telemetry.apply_retention(
            now, self.retention, self.rollup_after, rolled_until=self._rolled_until
        )
        self._rolled_until = _hour(now - self.rollup_after)
        self.runs += 1
        return result

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                result = self.run_once()
                log.debug("telemetry retention: %s", result)
            except Exception:  # the schedule must outlive any one failed run: logged
                self.failures += 1
                log.exception("telemetry retention run failed; retrying next interval")
            stop.wait(self.interval)
