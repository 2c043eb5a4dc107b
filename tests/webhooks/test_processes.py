"""Webhooks across real processes: ``flagrail serve`` delivering to a local receiver,
every delivery verified with the reference ``standardwebhooks`` package.

Two tests, each one scenario chain on one database, so the suite starts four
servers in all:

- PostgreSQL: two replicas on one database; 1,000 changes made concurrently by four
  writers (four environments, so their transactions really overlap) arrive once
  each, in ``sequence`` order; a change whose transaction fails is never delivered.
- SQLite: the receiver down for ``DOWN_SECONDS`` (3 s here; the issue's 30 s with
  ``FLAGRAIL_TEST_WEBHOOK_DOWN_SECONDS=30``) and back: all delivered, order kept;
  then the server SIGKILLed mid-delivery and a new one started: all delivered
  (repeats allowed, each with its id), order kept.

Retries are shortened through the ``FLAGRAIL_WEBHOOK_*`` settings; every wait is on
a condition with a deadline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flags.history import HistoryQuery
from flags.model import StateChange
from flags.store.history import record_change
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for
from tests.webhooks.receiver import Receiver
from tests.webhooks.server import Admin, Server

pytestmark = pytest.mark.slow

FLAG = "checkout.v2"
ENVS = ("development", "staging", "beta", "production")
DOWN_SECONDS = float(os.environ.get("FLAGRAIL_TEST_WEBHOOK_DOWN_SECONDS", "3"))
# Fast retries and a short lease, so the tests wait on the scenario, not the policy.
QUICK = {
    "FLAGRAIL_WEBHOOK_BACKOFF_BASE": "0.1",
    "FLAGRAIL_WEBHOOK_BACKOFF_CAP": "0.5",
    "FLAGRAIL_WEBHOOK_TIMEOUT": "1",
    "FLAGRAIL_WEBHOOK_LEASE": "4",
}


def _token(database_url: str) -> str:
    store = SqlFlagStore(database_url)
    try:
        store.create_flag(FLAG, actor="test")
        _info, token = store.create_token("webhook-admin", "admin", None, actor="test")
        return token
    finally:
        store.close()


def _change_ids(database_url: str) -> list[int]:
    """The ids of every state change's history row, oldest first."""
    store = SqlFlagStore(database_url)
    try:
        ids: list[int] = []
        cursor = None
        while True:
            page = store.list_history(HistoryQuery(action="state.update", limit=500, cursor=cursor))
            ids.extend(e.id for e in page.items)
            if page.next_cursor is None:
                return sorted(ids)
            cursor = page.next_cursor
    finally:
        store.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as rec:
        yield rec


def _serve(
    database_url: str, tmp_path: Path, *names: str, env: dict[str, str] | None = None
) -> list[Server]:
    """Servers started side by side (a start is mostly imports), once all are healthy."""
    settings = {**QUICK, **(env or {})}
    servers = [Server(database_url, tmp_path / f"{name}.log", settings) for name in names]
    try:
        for server in servers:
            wait_for(server.healthy, timeout=60, interval=0.05, what=f"{server.url} healthy")
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def _subscribe(admin: Admin, receiver: Receiver) -> str:
    sub = admin.subscribe(receiver.url(), events=["state.*"])
    receiver.secrets["/hook"] = sub["secret"]
    return str(sub["id"])


def _sequences(receiver: Receiver, *, unique: bool) -> list[int]:
    got = receiver.unique() if unique else receiver.received()
    assert all(r.verified for r in got), "a delivery failed standardwebhooks verification"
    return [int(r.payload["sequence"]) for r in got]


def _in_order(sequences: list[int]) -> bool:
    """Arrival order never goes back, except to repeat one already seen (a redelivery
    after a crash): every first arrival is higher than all before it."""
    top = 0
    seen: set[int] = set()
    for s in sequences:
        if s in seen:
            continue
        if s <= top:
            return False
        seen.add(s)
        top = s
    return True


@pytest.mark.postgres
def test_two_replicas_on_postgres__1000_concurrent_changes__each_once_in_order(
    postgres_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """Two replicas, 1,000 changes from four writers through both: every event arrives
    once, signed, in sequence order; a change whose transaction fails never does."""
    token = _token(postgres_url)
    # The 5 s timeout: a slow answer on a loaded machine is no failed attempt
    # (which would be sent again: at least once, but this test counts exactly once).
    servers = _serve(
        postgres_url,
        tmp_path,
        "a",
        "b",
        env={"FLAGRAIL_WEBHOOK_TIMEOUT": "5", "FLAGRAIL_WEBHOOK_LEASE": "15"},
    )
    admins = [Admin(s.url, token) for s in servers]
    store = SqlFlagStore(postgres_url)
    try:
        _subscribe(admins[0], receiver)

        def writer(env: str) -> None:
            for n in range(250):
                change = StateChange(enabled=True, rollout=n % 100 + 1)
                store.update_state(FLAG, env, change, actor="writer", reason=f"change {n}")

        # When: four environments change at once (the write path the admin API takes,
        # run here to spare the servers' CPU for delivering), both replicas delivering
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(writer, ENVS))
        # ... and a change fails after writing its history (and outbox) row
        with pytest.raises(RuntimeError), store.transaction() as conn:
            record_change(
                conn,
                actor="test",
                action="state.update",
                flag=FLAG,
                environment="production",
                after={"rollout": 0, "doomed": True},
            )
            raise RuntimeError("the change fails after its history row")
        admins[1].set_rollout(FLAG, "production", 100)
        expected = _change_ids(postgres_url)
        assert len(expected) == 1001
        wait_for(lambda: len(receiver.received()) >= 1001, 60, "1,001 deliveries")
        # Then: each exactly once, in sequence order, and never the failed one
        assert _sequences(receiver, unique=False) == expected
        assert not any(r.payload["data"]["after"].get("doomed") for r in receiver.received())
    finally:
        store.close()
        for admin in admins:
            admin.close()
        for server in servers:
            server.stop()


def test_receiver_down_then_back__then_server_sigkilled__all_delivered_in_order(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """Receiver down and back: retries back off, then every change arrives in order.
    Server SIGKILLed mid-delivery: a new server takes the expired leases over and
    every change arrives (repeats allowed, same id), order kept."""
    token = _token(sqlite_url)
    [server] = _serve(sqlite_url, tmp_path, "a")
    admin = Admin(server.url, token)
    try:
        sub_id = _subscribe(admin, receiver)
        admin.set_rollout(FLAG, "production", 1)
        wait_for(lambda: receiver.received(), 20, "the first delivery")

        # When: the receiver is down while 20 changes are made
        receiver.down()
        down_at = time.monotonic()
        for n in range(2, 22):
            admin.set_rollout(FLAG, "production", n)

        def retried() -> bool:
            log = admin.http.get(f"/admin/webhooks/{sub_id}/deliveries?status=pending").json()
            return any(d["attempts"] >= 2 and d["last_error"] for d in log["items"])

        wait_for(retried, 20, "failed attempts retried while down")
        wait_for(
            lambda: time.monotonic() - down_at >= DOWN_SECONDS,
            DOWN_SECONDS + 5,
            "the down period",
            interval=0.05,
        )
        assert len(receiver.received()) == 1
        receiver.up()
        # Then: all 21 arrive, once each, in order
        wait_for(lambda: len(receiver.unique()) >= 21, 30, "deliveries after recovery")
        assert _sequences(receiver, unique=True) == _change_ids(sqlite_url)

        # When: the server is SIGKILLed while deliveries are under way
        receiver.delay = 0.03
        for n in range(40):
            admin.set_rollout(FLAG, "production", n + 30)
        wait_for(lambda: len(receiver.received()) >= 26, 30, "deliveries under way")
        server.kill()
        admin.close()
        assert len(receiver.unique()) < 61, "all delivered before the kill: nothing tested"
        [server] = _serve(sqlite_url, tmp_path, "b")
        # Then: the new server delivers the rest; repeats only of ids already sent
        wait_for(lambda: len(receiver.unique()) >= 61, 60, "every delivery after restart")
        arrived = _sequences(receiver, unique=False)
        assert _in_order(arrived)
        assert sorted(set(arrived)) == _change_ids(sqlite_url)
    finally:
        admin.close()
        server.stop()
