"""The append-only flag history's SQL half: write rows, read pages. Nothing here
updates or deletes (and the database refuses it: see ``migrations/``).

``record_change`` (one row) and ``record_changes`` (several, one statement) must be
called inside the transaction of the change they record, so the change and its rows
commit or roll back together. Each history row also gets its ``webhook_outbox`` row
in that same statement (the transactional outbox of #17) while any webhook
subscription exists: a change that commits is delivered to webhook subscribers, one
that rolls back never is. With no subscription no outbox row is written (a
deployment without webhooks pays nothing for them); a subscription receives the
changes whose transaction saw it, so one committed in the same instant as its
creation may or may not reach it. The pure types
(``Actor``, ``HistoryQuery``, ``HistoryPage``) live in ``flags.history``.

Ordering (what the webhook fan-out relies on): on PostgreSQL every history write
holds ``HISTORY_WRITE_LOCK`` shared (a transaction advisory lock, taken in the
insert's own statement before its ids are drawn) until its transaction ends; the
fan-out takes it exclusively for a moment, so every id below its horizon is then
committed or rolled back for good. SQLite has one writer: ids commit in order.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    TextClause,
    and_,
    bindparam,
    false,
    insert,
    not_,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql

from flags.errors import ValidationError
from flags.history import (
    AT_SKEW,
    MAX_PAGE,
    Actor,
    HistoryPage,
    HistoryQuery,
    actor_columns,
    decode_cursor,
    encode_cursor,
    utc,
)
from flags.model import HistoryEntry
from flags.store.tables import history, webhook_outbox, webhook_subscriptions

__all__ = ["HISTORY_WRITE_LOCK", "list_changes", "record_change", "record_changes"]

# The PostgreSQL advisory lock key every history write holds shared until it commits
# (see the module docstring); the webhook fan-out takes it exclusively for a moment.
HISTORY_WRITE_LOCK = 0x666C6167_68697374 & 0x7FFFFFFFFFFFFFFF
_COLUMNS = [c.name for c in history.columns if c.name != "id"]
# Whether any webhook subscription exists (SQLite writes outbox rows only then).
_ANY_SUBSCRIPTION = select(webhook_subscriptions.c.id).limit(1)


def record_change(
    conn: Connection,
    *,
    actor: str | Actor,
    action: str,
    flag: str | None = None,
    environment: str | None = None,
    before: Any = None,
    after: Any = None,
    reason: str | None = None,
    request_id: str | None = None,
    env_version: int | None = None,
    at: datetime | None = None,
) -> None:
    """Append one history row on ``conn`` (inside the caller's transaction). An
    ``Actor`` also fills the token and claimed-actor columns; a string names an actor
    with no token (``plan:<id>``, ``cli:<user>``)."""
    record_changes(
        conn,
        [
            {
                "at": at or datetime.now(UTC),
                "actor": actor,
                "action": action,
                "flag": flag,
                "environment": environment,
                "before": before,
                "after": after,
                "reason": reason,
                "request_id": request_id,
                "env_version": env_version,
            }
        ],
    )


def record_changes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append several history rows on ``conn``, each with its webhook outbox row, in
    one statement on PostgreSQL (inside the caller's transaction, so the rows commit or
    roll back with the change). Each row has ``record_change``'s keywords, all of them."""
    if not rows:
        return
    full = [{**row, **actor_columns(row["actor"])} for row in rows]
    if conn.dialect.name == "postgresql":
        names = tuple(name for name in _COLUMNS if name in full[0])
        params = {f"{name}_{i}": row[name] for i, row in enumerate(full) for name in names}
        conn.execute(_outboxed_insert(names, len(full)), params)
    else:  # SQLite: one writer at a time, so ids commit in order without a lock
        if conn.execute(_ANY_SUBSCRIPTION).first() is None:
            conn.execute(insert(history), full)  # no RETURNING: a plain executemany
            return
        ids = conn.execute(insert(history).returning(history.c.id), full).scalars().all()
        conn.execute(insert(webhook_outbox), [{"history_id": i} for i in ids])


@functools.lru_cache(maxsize=64)
def _outboxed_insert(names: tuple[str, ...], count: int) -> TextClause:
    """``WITH lock AS (SELECT pg_advisory_xact_lock_shared(..)), h AS (INSERT INTO
    history SELECT .. FROM (VALUES ..) CROSS JOIN lock RETURNING id) INSERT INTO
    webhook_outbox (history_id) SELECT id FROM h WHERE EXISTS (a subscription)``,
    for ``count`` rows of ``names``
    bound as ``<name>_<i>``: one round trip. The history insert reads its rows
    through the lock, so the lock is held before any id is drawn. Written as text
    once per shape (SQLAlchemy would compile a ``values()`` construct on every call,
    which cost more than the statement); the typed binds still encode JSON."""
    dialect = postgresql.dialect()
    sql_types = {name: history.c[name].type.compile(dialect=dialect) for name in names}
    rows = ", ".join(
        "(" + ", ".join(f"CAST(:{name}_{i} AS {sql_types[name]})" for name in names) + ")"
        for i in range(count)
    )
    columns = ", ".join(names)
    statement = text(
        "WITH history_write_lock AS "
        f"(SELECT pg_advisory_xact_lock_shared({HISTORY_WRITE_LOCK}) AS held), "
        f"h AS (INSERT INTO history ({columns}) SELECT v.* FROM (VALUES {rows}) "
        f"AS v ({columns}) CROSS JOIN history_write_lock RETURNING id) "
        "INSERT INTO webhook_outbox (history_id) SELECT id FROM h "
        "WHERE EXISTS (SELECT 1 FROM webhook_subscriptions)"
    )
    return statement.bindparams(
        *(
            bindparam(f"{name}_{i}", type_=history.c[name].type)
            for i in range(count)
            for name in names
        )
    )


def list_changes(conn: Connection, query: HistoryQuery) -> HistoryPage:
    """One page of history, newest first. Raises ``ValidationError`` for a bad limit or cursor."""
    if not 1 <= query.limit <= MAX_PAGE:
        raise ValidationError(f"limit must be from 1 to {MAX_PAGE}", field="limit")
    conditions = []
    if query.flag is not None:
        conditions.append(history.c.flag == query.flag)
    if query.environment is not None:
        conditions.append(history.c.environment == query.environment)
    if query.actor is not None:
        conditions.append(history.c.actor == query.actor)
    if query.action is not None:
        conditions.append(history.c.action == query.action)
    # Compare in UTC: SQLite stores the UTC wall-clock time and ignores a bound's offset.
    if query.since is not None:
        since = utc(query.since)
        conditions.append(history.c.at >= since)
        probe = _id_near(conn, since, before=True)
        if probe is not None:
            conditions.append(history.c.id > probe)
    if query.until is not None:
        until = utc(query.until)
        conditions.append(history.c.at < until)
        probe = _id_near(conn, until, before=False)
        if probe is not None:
            conditions.append(history.c.id < probe)
    if query.cursor is not None:
        conditions.append(history.c.id < decode_cursor(query.cursor))
    if query.hidden_actions:
        conditions.append(history.c.action.not_in(query.hidden_actions))
    if query.token_actions and query.visible_tokens is not None:
        # A token row is about the token whose public form it holds (after; before for
        # a revoke): shown only when that token is one the reader may see.
        subject = history.c.after["id"].as_string()
        about_visible = subject.in_(query.visible_tokens) if query.visible_tokens else false()
        conditions.append(or_(not_(history.c.action.in_(query.token_actions)), about_visible))
    if query.scope is not None:
        conditions.append(
            or_(history.c.environment.is_(None), history.c.environment.in_(query.scope))
        )
    stmt = select(history).order_by(history.c.id.desc()).limit(query.limit + 1)
    if conditions:
        stmt = stmt.where(and_(*conditions))
    rows = conn.execute(stmt).mappings().all()
    items = [
        HistoryEntry(
            id=row["id"],
            at=utc(row["at"]),
            actor=row["actor"],
            action=row["action"],
            flag=row["flag"],
            environment=row["environment"],
            before=row["before"],
            after=row["after"],
            reason=row["reason"],
            request_id=row["request_id"],
            token_id=row["token_id"],
            token_name=row["token_name"],
            claimed_actor=row["claimed_actor"],
            env_version=row["env_version"],
        )
        for row in rows[: query.limit]
    ]
    next_cursor = encode_cursor(items[-1].id) if len(rows) > query.limit else None
    return HistoryPage(items, next_cursor)


def _id_near(conn: Connection, instant: datetime, *, before: bool) -> int | None:
    """An id bound for a time filter, from one probe of the ``at`` index.

    Pages run in id (insertion) order, and ``at`` is taken inside the writing
    transaction, so the two orders disagree by at most a transaction's length, far
    below ``AT_SKEW``. So every row at or after ``instant`` has an id above that of any
    row stamped more than ``AT_SKEW`` before it (``before=True``), and every row before
    ``instant`` an id below that of any row stamped ``AT_SKEW`` or more after it
    (``before=False``). With that bound a filtered page reads about a page of rows
    instead of every newer row. None when there is no such row.
    """
    try:
        edge = instant - AT_SKEW if before else instant + AT_SKEW
    except OverflowError:  # within AT_SKEW of year 1 or 9999: no bound needed
        return None
    stmt = select(history.c.id).limit(1)
    if before:
        stmt = stmt.where(history.c.at < edge).order_by(history.c.at.desc())
    else:
        stmt = stmt.where(history.c.at >= edge).order_by(history.c.at)
    found = conn.execute(stmt).scalar()
    return None if found is None else int(found)
