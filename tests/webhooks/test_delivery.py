"""api.webhooks.store + worker against a real database and a real HTTP receiver:
order, retries, leases, the delivery log, redelivery, pause, rollback."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from api.webhooks.model import parse_subscription
from api.webhooks.store import Status, WebhookStore
from api.webhooks.worker import DeliveryWorker, WorkerSettings, retry_delay
from flags.store.history import record_change
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for
from tests.webhooks.conftest import commit_change
from tests.webhooks.receiver import Receiver

FAST = WorkerSettings(
    timeout=2.0,
    backoff_base=0.05,
    backoff_cap=0.2,
    lease=timedelta(seconds=10),
    idle_interval=0.01,
)


def _subscribe(store: WebhookStore, receiver: Receiver, path: str = "/hook", **body: object):  # type: ignore[no-untyped-def]
    sub, secret = store.create(
        parse_subscription({"url": receiver.url(path), "events": ["state.*"], **body}),
        created_by="admin",
        scope=None,
        admin=True,
    )
    receiver.secrets[path] = secret
    return sub


def _sequences(receiver: Receiver, path: str = "/hook") -> list[int]:
    return [r.payload["sequence"] for r in receiver.received(path)]


def test_retry_delay__exponential_capped_jittered() -> None:
    """Delays double per attempt from base, stay within [step/2, step), never above cap."""
    assert retry_delay(1, base=1, cap=100, rand=lambda: 0.0) == 0.5
    assert retry_delay(3, base=1, cap=100, rand=lambda: 0.0) == 2.0
    assert retry_delay(50, base=1, cap=100, rand=lambda: 0.999) < 100
    assert retry_delay(10_000, base=1, cap=86_400, rand=lambda: 0.0) == 43_200


def test_worker__changes__delivered_in_order_and_verified(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """Every committed change arrives once, signed, in sequence order."""
    _subscribe(store, receiver)
    ids = [commit_change(engine, n) for n in range(40)]
    worker = DeliveryWorker(store, FAST)
    worker.start()
    try:
        wait_for(lambda: len(receiver.received()) >= 40, 20, "40 deliveries")
    finally:
        worker.close()
    got = receiver.received()
    assert [r.payload["sequence"] for r in got] == ids
    assert all(r.verified for r in got)
    assert len({r.msg_id for r in got}) == 40


def test_worker__store_kill__each_event_carries_the_version_it_made(
    store: WebhookStore, receiver: Receiver, database_url: str
) -> None:
    """A kill through the flag store is one ``state.killed`` event per environment, each
    with the version the environments table holds for it after the kill."""
    _subscribe(store, receiver)
    flags = SqlFlagStore(database_url)
    worker = DeliveryWorker(store, FAST)
    try:
        envs = [e.name for e in flags.list_environments()]
        assert len(envs) > 1
        flags.create_flag("checkout.v2", actor="test")
        flags.kill("checkout.v2", None, reason="drill", actor="test")
        versions = {env: flags.environment_version(env) for env in envs}
        worker.start()
        wait_for(lambda: len(receiver.received()) >= len(envs), 20, "a delivery per environment")
    finally:
        worker.close()
        flags.close()
    got = {r.payload["data"]["environment"]: r.payload for r in receiver.received()}
    assert {p["type"] for p in got.values()} == {"state.killed"}
    assert {env: p["data"]["env_version"] for env, p in got.items()} == versions


def test_worker__rolled_back_change__never_delivered(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """A transaction that fails after its history and outbox rows sends nothing."""
    _subscribe(store, receiver)
    first = commit_change(engine, 1)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        record_change(conn, actor="a", action="kill", flag="f", environment="prod")
        raise RuntimeError("the change's transaction fails")
    last = commit_change(engine, 2)
    worker = DeliveryWorker(store, FAST)
    while worker.run_once():
        pass
    worker.close()
    assert _sequences(receiver) == [first, last]


def test_worker__receiver_down__retries_then_in_order(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """While the receiver is down attempts fail and back off; once up, all arrive in order."""
    sub = _subscribe(store, receiver)
    receiver.down()
    ids = [commit_change(engine, n) for n in range(5)]
    worker = DeliveryWorker(store, FAST)
    worker.start()
    try:
        wait_for(
            lambda: any(d.attempts >= 2 for d in store.deliveries(sub.id)), 10, "failed attempts"
        )
        log = store.deliveries(sub.id)
        head = min(log, key=lambda d: d.sequence)
        assert head.last_error and head.status == Status.PENDING
        assert all(d.attempts == 0 for d in log if d is not head)  # the rest wait their turn
        receiver.up()
        wait_for(lambda: len(receiver.unique()) >= 5, 10, "deliveries after recovery")
    finally:
        worker.close()
    assert [r.payload["sequence"] for r in receiver.unique()] == ids
    assert all(d.status == Status.DELIVERED for d in store.deliveries(sub.id))


def test_worker__retry_window_over__failed_logged_then_redelivered(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """After the window a delivery is failed with its code and body; redeliver sends it again."""
    sub = _subscribe(store, receiver)
    receiver.status = 500
    hid = commit_change(engine)
    worker = DeliveryWorker(store, WorkerSettings(retry_window=timedelta(0), idle_interval=0.01))
    worker.run_once()
    [entry] = store.deliveries(sub.id)
    assert (entry.status, entry.attempts, entry.response_code) == (Status.FAILED, 1, 500)
    assert entry.response_body == '{"ok":true}' and entry.last_error == "HTTP 500"
    receiver.status = 200
    store.redeliver(sub.id, entry.id)
    worker.run_once()
    worker.close()
    [entry] = store.deliveries(sub.id)
    assert entry.status == Status.DELIVERED
    assert [r.payload["sequence"] for r in receiver.received()] == [hid, hid]
    assert receiver.received()[0].msg_id == receiver.received()[1].msg_id


def test_claim__expired_lease__taken_over_and_late_record_refused(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """A crashed claimer's delivery is claimed again once its lease expires."""
    _subscribe(store, receiver)
    commit_change(engine)
    store.fan_out()
    now = datetime.now(UTC)
    [first] = store.claim("a", lease=timedelta(seconds=30), now=now)
    assert store.claim("b", lease=timedelta(seconds=30), now=now + timedelta(seconds=10)) == []
    [taken] = store.claim("b", lease=timedelta(seconds=30), now=now + timedelta(seconds=31))
    assert taken.id == first.id
    kw = {"response_code": 200, "error": None, "response_body": "", "next_attempt_at": None}
    assert not store.record(first, "a", status=Status.DELIVERED, **kw)
    assert store.record(taken, "b", status=Status.DELIVERED, **kw)


def test_worker__paused__held_then_sent_on_resume(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """A paused subscription collects deliveries and sends them, in order, on resume."""
    sub = _subscribe(store, receiver)
    store.set_paused(sub.id, True)
    ids = [commit_change(engine, n) for n in range(3)]
    worker = DeliveryWorker(store, FAST)
    worker.run_once()
    assert receiver.received() == []
    assert store.depth() == 3
    store.set_paused(sub.id, False)
    while worker.run_once():
        pass
    worker.close()
    assert _sequences(receiver) == ids
    assert store.depth() == 0


def test_worker__slack_format__message_body(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """A slack subscription is sent text plus blocks, linked to the console."""
    _subscribe(store, receiver, "/slack", format="slack")
    commit_change(engine, action="kill", after={"killed": True}, before={"killed": False})
    worker = DeliveryWorker(store, FAST)
    worker.run_once()
    worker.close()
    [got] = receiver.received("/slack")
    assert got.verified
    assert "KILLED" in got.payload["text"]
    assert any(b["type"] == "actions" for b in got.payload["blocks"])


def test_worker__scoped_subscription__other_environments_never_stored(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """A subscription made by a staging-scoped token never gets a prod event."""
    sub, _ = store.create(
        parse_subscription({"url": receiver.url(), "events": ["*"]}),
        created_by="stager",
        scope=("staging",),
        admin=False,
    )
    commit_change(engine, environment="prod")
    staging = commit_change(engine, environment="staging")
    store.fan_out()
    assert [d.sequence for d in store.deliveries(sub.id)] == [staging]


def test_worker__pass_raises__loop_survives(
    store: WebhookStore, engine: Engine, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception in a pass is logged and the loop goes on delivering."""
    _subscribe(store, receiver)
    real = store.fan_out
    calls = {"n": 0}

    def flaky(**kw: object) -> int:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("database hiccup")
        return real(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "fan_out", flaky)
    hid = commit_change(engine)
    worker = DeliveryWorker(store, FAST)
    worker.start()
    try:
        wait_for(lambda: receiver.received(), 10, "delivery after failed passes")
    finally:
        worker.close()
    assert _sequences(receiver) == [hid]


def test_workers__two_concurrent__each_delivered_once(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """Two workers on one database: every event once, in order per subscription."""
    _subscribe(store, receiver, "/a")
    _subscribe(store, receiver, "/b")
    ids = [commit_change(engine, n) for n in range(30)]
    workers = [DeliveryWorker(store, FAST, owner=f"w{i}") for i in range(2)]
    threads = [threading.Thread(target=w.start) for w in workers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    try:
        wait_for(lambda: len(receiver.received()) >= 60, 20, "60 deliveries")
    finally:
        for w in workers:
            w.close()
    assert _sequences(receiver, "/a") == ids
    assert _sequences(receiver, "/b") == ids
    assert len(receiver.received()) == 60


def test_worker__metrics__results_lag_and_depth_counted(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """Deliveries are counted by result, their lag observed, the depth sampled."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        sample("flagrail_webhook_deliveries_total", result="delivered"),
        sample("flagrail_webhook_deliveries_total", result="retry"),
        sample("flagrail_webhook_delivery_lag_seconds_count"),
    )
    _subscribe(store, receiver)
    receiver.status = 503
    commit_change(engine)
    worker = DeliveryWorker(store, FAST)
    worker.run_once()
    assert sample("flagrail_webhook_outbox_depth") == 1
    receiver.status = 200
    sub_id = store.list()[0].id

    def retried() -> bool:
        worker.run_once()
        return store.deliveries(sub_id)[0].status == Status.DELIVERED

    wait_for(retried, 10, "the retry")
    worker.close()
    after = (
        sample("flagrail_webhook_deliveries_total", result="delivered"),
        sample("flagrail_webhook_deliveries_total", result="retry"),
        sample("flagrail_webhook_delivery_lag_seconds_count"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


def test_worker__no_subscription__a_change_does_not_wake_it_until_one_exists(
    store: WebhookStore, engine: Engine, receiver: Receiver
) -> None:
    """Without subscriptions a committed change costs the worker nothing: its pass
    finds none and later changes do not wake it; once one exists, its changes arrive
    (through the poll, then through wakes again)."""
    worker = DeliveryWorker(store, FAST)
    try:
        assert worker.run_once() is False  # idle: looks for subscriptions, finds none
        worker.wake_for_change()
        assert not worker._wake.is_set()
        _subscribe(store, receiver)
        first = commit_change(engine, 1)
        assert worker.run_once() is True  # the poll fans the change out and sends it
        worker.wake_for_change()
        assert worker._wake.is_set()
        assert _sequences(receiver)[-1] == first
    finally:
        worker.close()


def test_worker__subscription_created_through_this_process__changes_wake_it_at_once(
    store: WebhookStore,
) -> None:
    """The create route tells the worker, which then needs no poll to learn it."""
    worker = DeliveryWorker(store, FAST)
    try:
        worker.run_once()
        worker.wake_for_change()
        assert not worker._wake.is_set()
        worker.subscription_added()
        worker._wake.clear()
        worker.wake_for_change()
        assert worker._wake.is_set()
    finally:
        worker.close()
