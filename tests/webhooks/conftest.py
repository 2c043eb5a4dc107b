"""Fixtures of the webhook tests: a migrated database with the webhook tables, a
store over it, a receiver, and a way to commit a change the way the write path does
(history row and outbox row in one transaction)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, insert

from api.webhooks import tables as webhook_tables
from api.webhooks.store import WebhookStore, enqueue
from flags.store.tables import history
from tests.webhooks.receiver import Receiver


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
    webhook_tables.metadata.create_all(eng)  # no-op once a migration made them
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def store(engine: Engine) -> WebhookStore:
    return WebhookStore(engine, base_url="https://flags.example.com")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rec:
        yield rec


def commit_change(engine: Engine, n: int = 0, **over: Any) -> int:
    """Commit one history row with its outbox row, as the write path does; its id."""
    row = {
        "at": datetime.now(UTC),
        "actor": "alice",
        "action": "state.update",
        "flag": "checkout.v2",
        "environment": "prod",
        "before": {"rollout": n},
        "after": {"rollout": n + 1},
        "reason": f"change {n}",
        **over,
    }
    with engine.begin() as conn:
        hid = int(conn.execute(insert(history).values(**row).returning(history.c.id)).scalar_one())
        enqueue(conn, [hid])
    return hid
