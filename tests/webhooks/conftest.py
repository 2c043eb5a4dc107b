"""Fixtures of the webhook tests: a migrated database (migration 0011 made the
webhook tables), a store over it, a receiver, and a way to commit a change through
the write path (``record_change``: history row and outbox row in one transaction)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select

from api.webhooks.store import WebhookStore
from flags.store.history import record_change
from flags.store.tables import history
from tests.webhooks.receiver import Receiver


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = create_engine(database_url)
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
    """Commit one history row (and so its outbox row) through ``record_change``; its id."""
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
        record_change(conn, **row)
        return int(conn.execute(select(func.max(history.c.id))).scalar_one())
