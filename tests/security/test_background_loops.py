"""Issue #14, finding 2: no input or failure stops a server's background loop.

``applied_version: 2**64`` once raised ``OverflowError`` in the ``flagrail-instances``
flush, which caught only ``FlagrailError``: the thread died and no report was persisted
again. The value is now refused at the edge (422), and every loop of the server (the
instance flush, the broadcaster's backstop, the telemetry retention, the Redis
publisher and subscriber) survives any exception, logs it and goes on. Each test
breaks a loop inside a real server and shows the next piece of work still done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sdk.harness import ENV, Deployment, LiveServer, StreamReader

from api.routes.sdk import SdkServerSettings
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for


@pytest.fixture
def deployment(database_url: str) -> Iterator[Deployment]:
    d = Deployment(database_url)
    try:
        yield d
    finally:
        d.close()


def report(server: LiveServer, token: str, instance_id: str, version: int) -> httpx.Response:
    body = {
        "instance_id": instance_id,
        "environment": ENV,
        "host": "h",
        "pid": 1,
        "applied_version": version,
    }
    return httpx.post(
        f"{server.url}/sdk/v1/instances",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def persisted(server: LiveServer) -> dict[str, int]:
    since = datetime.now(UTC) - timedelta(hours=1)
    rows = server.sdk.telemetry.instances(ENV, seen_since=since)
    return {r["instance_id"]: r["applied_version"] for r in rows}


def thread_named(name: str) -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == name), None)


def test_applied_version_2_64__refused_and_the_flush_goes_on(deployment: Deployment) -> None:
    """The reproduced attack: a 422, and later reports are still persisted."""
    server = deployment.server()
    r = report(server, deployment.client_token, "i-1", 2**64)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "applied_version"
    assert report(server, deployment.client_token, "i-2", 3).status_code == 202
    wait_for(lambda: persisted(server) == {"i-2": 3}, what="the next report persisted")


def test_instance_flush__store_raises_overflow__thread_lives_and_next_batch_lands(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception in a flush (here the OverflowError of the report) is
    logged, the batch dropped, and the thread persists the next one."""
    server = deployment.server()
    telemetry = server.sdk.telemetry
    registry = server.sdk.registry
    real = telemetry.record_instances
    calls: list[int] = []

    def broken(batch: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        real(batch)

    monkeypatch.setattr(telemetry, "record_instances", broken)
    assert report(server, deployment.client_token, "i-1", 1).status_code == 202
    wait_for(lambda: registry.flush_failures == 1, what="the failed flush")
    assert report(server, deployment.client_token, "i-2", 2).status_code == 202
    wait_for(lambda: "i-2" in persisted(server), what="the next batch persisted")
    assert thread_named("flagrail-instances") is not None


def test_broadcast_backstop__database_read_raises__thread_lives_and_streams_heal(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in the backstop's database poll does not end it: a change written to the
    database behind the server's back still reaches an open stream."""
    deployment.create_flag("checkout")
    server = deployment.server(sdk_settings=SdkServerSettings(version_poll_interval=0.05))
    store = server.store
    real = store.list_environments
    failures = [0]

    def flaky() -> Any:
        if failures[0] < 3:
            failures[0] += 1
            raise KeyError("not a FlagrailError")
        return real()

    stream = StreamReader(server.url, deployment.client_token)
    try:
        wait_for(lambda: stream.of("snapshot"), what="the stream's snapshot")
        monkeypatch.setattr(store, "list_environments", flaky)
        wait_for(lambda: failures[0] == 3, what="three failed polls")
        assert thread_named("flagrail-broadcast") is not None
        other = SqlFlagStore(deployment.database_url)  # no listener: only the poll sees it
        try:
            other.kill("checkout", [ENV], actor="test", reason="behind its back")
        finally:
            other.close()
        wait_for(lambda: len(stream.of("snapshot")) >= 2, what="the resync snapshot")
    finally:
        stream.close()


def test_retention__run_raises__schedule_goes_on(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed retention run is logged and counted; the next scheduled run happens."""
    server = deployment.server()
    retention = server.sdk.retention
    telemetry = server.sdk.telemetry
    real = telemetry.apply_retention
    seen = [0]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        seen[0] += 1
        if seen[0] == 1:
            raise ZeroDivisionError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(telemetry, "apply_retention", flaky)
    runs = retention.runs
    retention.interval = 0.05
    retention.close()
    retention.start()
    wait_for(
        lambda: retention.failures == 1 and retention.runs > runs, what="a run after one failed"
    )


@pytest.mark.redis
@pytest.mark.parametrize("path", ["thread", "inline link"])
def test_redis_publisher__unexpected_error__next_change_published(
    deployment: Deployment,
    redis_url: str,
    key_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """The publisher thread outlives an unexpected error from the client, whether the
    message went through the thread's client or was written on the inline link (whose
    reply the thread reads)."""
    import redis

    from flags.sync import redis_pubsub

    deployment.create_flag("checkout")
    server = deployment.server(
        redis_url=redis_url, sdk_settings=SdkServerSettings(redis_prefix=key_prefix)
    )
    publisher = server.sdk.publisher
    # It connects at start, so the first change goes inline: wait for that, or (the
    # thread's path) turn the link off first.
    wait_for(lambda: publisher._link is not None, what="the inline link")
    if path == "thread":
        with publisher._order:
            publisher.use_inline = False
            link, publisher._link = publisher._link, None
        assert link is not None
        link.close()
    r = redis.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    pubsub.subscribe(f"{key_prefix}changes:{ENV}")
    wait_for(lambda: pubsub.get_message(timeout=0.1) is not None, what="subscribed")
    calls = [0]
    if path == "thread":
        real = redis.Redis.publish

        def flaky(self: Any, channel: Any, data: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                raise UnicodeError("not a RedisError")
            return real(self, channel, data)

        monkeypatch.setattr(redis.Redis, "publish", flaky)
    else:
        real_reply = redis_pubsub._InlineLink.read_reply

        def flaky_reply(self: Any) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise UnicodeError("not a RedisError")
            real_reply(self)

        monkeypatch.setattr(redis_pubsub._InlineLink, "read_reply", flaky_reply)
    try:
        for action in ("kill", "unkill"):
            r2 = deployment.admin_request(
                server,
                "POST",
                f"/admin/flags/checkout/{action}",
                json={"reason": "t", "environments": [ENV]},
            )
            assert r2.status_code == 200, r2.text
        wait_for(lambda: publisher.failures == 1, what="the failed publish")
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), what="the next publish")
        assert message["type"] == "message"
    finally:
        pubsub.close()
        r.close()
