"""The transactional outbox: while a subscription exists every history row gets its
outbox row in the same transaction (``flags.store.history.record_changes``), on
SQLite and PostgreSQL; a change that fails or rolls back leaves neither; with no
subscription no outbox row is written at all."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from api.webhooks.model import SubscriptionSpec
from api.webhooks.store import WebhookStore
from flags.errors import EnvironmentNotFoundError
from flags.model import StateChange
from flags.store.history import record_change
from flags.store.sql import SqlFlagStore
from flags.store.tables import history, webhook_outbox

FLAG = "checkout.v2"


def _subscribe(s: SqlFlagStore) -> None:
    spec = SubscriptionSpec(url="https://hooks.example.com/x", events=("flag.*",))
    WebhookStore(s.engine).create(spec, created_by="test", scope=None, admin=True)


@pytest.fixture
def flag_store(database_url: str) -> Iterator[SqlFlagStore]:
    s = SqlFlagStore(database_url)
    try:
        s.create_flag(FLAG, actor="test")
        _subscribe(s)
        yield s
    finally:
        s.close()


def test_no_subscription__changes_write_history_and_no_outbox_row(database_url: str) -> None:
    """A deployment without webhooks pays nothing for them: no outbox rows queue up;
    the first subscription turns the outbox on for the changes after it."""
    s = SqlFlagStore(database_url)
    try:
        s.create_flag(FLAG, actor="test")
        s.kill(FLAG, None, reason="incident", actor="alice")
        assert len(_history_ids(s)) > 1
        assert _outbox_ids(s) == []
        unsubscribed = set(_history_ids(s))
        _subscribe(s)  # its own history row (webhook.create) is the first one queued
        s.unkill(FLAG, None, reason="fixed", actor="alice")
        new = set(_history_ids(s)) - unsubscribed
        assert new and set(_outbox_ids(s)) == new
    finally:
        s.close()


def _history_ids(s: SqlFlagStore) -> list[int]:
    with s.engine.connect() as conn:
        return list(conn.execute(select(history.c.id).order_by(history.c.id)).scalars())


def _outbox_ids(s: SqlFlagStore) -> list[int]:
    with s.engine.connect() as conn:
        return list(
            conn.execute(
                select(webhook_outbox.c.history_id).order_by(webhook_outbox.c.history_id)
            ).scalars()
        )


def test_record_changes__kill_in_every_environment__one_outbox_row_per_history_row(
    flag_store: SqlFlagStore,
) -> None:
    """A kill writes its history rows (one per environment) and as many outbox rows."""
    before = set(_history_ids(flag_store))
    # When: a kill in every environment (one multi-row history write)
    result = flag_store.kill(FLAG, None, reason="incident", actor="alice")
    # Then: the new history rows and the outbox rows are the same ids
    new = sorted(set(_history_ids(flag_store)) - before)
    assert len(new) == len(result.changed) > 1
    assert set(new) <= set(_outbox_ids(flag_store))
    # and no outbox row without its history row
    assert set(_outbox_ids(flag_store)) <= set(_history_ids(flag_store))


def test_record_change__transaction_fails_after_the_row__no_outbox_row(
    flag_store: SqlFlagStore,
) -> None:
    """A transaction that fails after writing its history row leaves no outbox row."""
    outbox, rows = _outbox_ids(flag_store), _history_ids(flag_store)
    with pytest.raises(RuntimeError), flag_store.transaction() as conn:
        record_change(conn, actor="test", action="state.update", flag=FLAG, environment="prod")
        inside = conn.execute(select(func.count()).select_from(webhook_outbox)).scalar_one()
        assert inside == len(outbox) + 1  # written, in this transaction
        raise RuntimeError("the change fails after its history row")
    assert _outbox_ids(flag_store) == outbox
    assert _history_ids(flag_store) == rows


def test_kill__unknown_environment__no_history_and_no_outbox_row(
    flag_store: SqlFlagStore,
) -> None:
    """A mutation refused inside its transaction writes no outbox row."""
    outbox = _outbox_ids(flag_store)
    with pytest.raises(EnvironmentNotFoundError):
        flag_store.kill(FLAG, ["production", "no-such-env"], reason="incident", actor="alice")
    assert _outbox_ids(flag_store) == outbox


def test_fan_out__writers_commit_between_its_read_and_write__never_database_locked(
    sqlite_url: str,
) -> None:
    """SQLite: a fan-out reads the outbox, then deletes from it. Writers committing in
    between must not make it fail with "database is locked" (a deferred transaction
    cannot upgrade its read lock after another commit); it takes the write lock first."""
    import threading

    s = SqlFlagStore(sqlite_url)
    try:
        s.create_flag(FLAG, actor="test")
        _subscribe(s)
        hooks = WebhookStore(s.engine)
        stop = threading.Event()
        errors: list[BaseException] = []

        def write(n: int) -> None:
            try:
                for i in range(40):
                    s.update_state(
                        FLAG, "production", StateChange(rollout=(n * 40 + i) % 101), actor="w"
                    )
            except BaseException as exc:
                errors.append(exc)

        queued, written = len(_outbox_ids(s)), len(_history_ids(s))
        writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for w in writers:
            w.start()
        fanned = 0
        while any(w.is_alive() for w in writers) or _outbox_ids(s):
            try:
                fanned += hooks.fan_out()
                hooks.claim("worker-1", lease=timedelta(seconds=30))
            except BaseException as exc:
                errors.append(exc)
                break
        stop.set()
        for w in writers:
            w.join(timeout=60)
        assert errors == []
        assert fanned == queued + len(_history_ids(s)) - written > 100
        assert _outbox_ids(s) == []
    finally:
        s.close()
