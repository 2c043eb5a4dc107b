"""``RedisPublisher``: the committing thread's non-blocking send on the inline link, and
the thread's queue behind it, against a throwaway redis-server (which may be paused)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from flags.model import FlagChanged
from flags.sync.redis_pubsub import RedisPublisher, _InlineLink, read_hint
from flags.testing.redis_server import RedisServer

ENV = "production"
CHANNEL = f"flagrail:changes:{ENV}"

pytestmark = pytest.mark.redis


def change(version: int) -> FlagChanged:
    return FlagChanged(ENV, version, "checkout", None)


def wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def listener(redis_server: RedisServer) -> Iterator[redis.client.PubSub]:
    client = redis.Redis.from_url(redis_server.url)
    pubsub = client.pubsub()
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=2) is not None  # the subscribe confirmation
    try:
        yield pubsub
    finally:
        pubsub.close()
        client.close()


def received(pubsub: redis.client.PubSub, count: int) -> list[int | None]:
    versions: list[int | None] = []
    deadline = time.monotonic() + 5
    while len(versions) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.2)
        if message is not None and message["type"] == "message":
            versions.append(read_hint(message["data"], ENV))
    return versions


@pytest.fixture
def publisher(redis_server: RedisServer) -> Iterator[RedisPublisher]:
    pub = RedisPublisher(redis_server.url)
    pub.start()
    try:
        yield pub
    finally:
        pub.close()


def test_publish_changes__back_to_back__in_order_and_mostly_inline(
    publisher: RedisPublisher, listener: redis.client.PubSub
) -> None:
    """After the thread's first publish opens the link, the committing thread sends
    (until MAX_UNANSWERED replies are outstanding, then the thread takes over until it
    has caught up): every message arrives, in order, and each is acknowledged."""
    publisher.publish_changes([change(1)])
    wait_for(lambda: publisher._link is not None)
    for version in range(2, 101):
        publisher.publish_changes([change(version)])
    assert received(listener, 100) == list(range(1, 101))
    wait_for(lambda: publisher.published == 100)
    assert publisher.inline >= 60 and publisher.failures == 0


def test_publish_changes__send_would_not_take_it__link_shut_and_thread_publishes(
    publisher: RedisPublisher, listener: redis.client.PubSub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send that cannot be whole shuts the link; that message and the next go through
    the thread, in order, and a new link opens after."""
    publisher.publish_changes([change(1)])
    wait_for(lambda: publisher._link is not None)
    first = publisher._link
    # The link may be open from the start (the thread warms it), so change 1 may have
    # been sent on it: its reply is read before the refused send shuts the link, or it
    # would count as a failure (Redis published it, but nothing read the reply).
    wait_for(lambda: publisher.published == 1)
    real_send = _InlineLink.send

    def refuse(self: _InlineLink, channel: str, data: bytes) -> bool:
        self.shut = True
        return False

    monkeypatch.setattr(_InlineLink, "send", refuse)
    publisher.publish_changes([change(2)])
    publisher.publish_changes([change(3)])
    monkeypatch.setattr(_InlineLink, "send", real_send)
    assert received(listener, 3) == [1, 2, 3]
    wait_for(lambda: publisher._link is not None and publisher._link is not first)
    publisher.publish_changes([change(4)])
    assert received(listener, 1) == [4]
    wait_for(lambda: publisher.published == 4)
    assert publisher.failures == 0


def test_publish_changes__redis_paused__returns_at_once_then_catches_up(
    publisher: RedisPublisher, listener: redis.client.PubSub, redis_server: RedisServer
) -> None:
    """A hung Redis never holds up the committing thread: 200 publishes return in well
    under a second; unacknowledged inline sends count as failures; after the resume the
    queued messages go out and the link comes back."""
    publisher.publish_changes([change(1)])
    wait_for(lambda: publisher._link is not None)
    assert received(listener, 1) == [1]
    redis_server.pause()
    try:
        started = time.monotonic()
        for version in range(2, 202):
            publisher.publish_changes([change(version)])
        assert time.monotonic() - started < 0.5
        wait_for(lambda: publisher.failures >= 1, timeout=10)
    finally:
        redis_server.resume()
    wait_for(lambda: publisher._backlog == 0, timeout=15)
    publisher.publish_changes([change(202)])
    wait_for(lambda: publisher._link is not None, timeout=10)
    versions = received(listener, 1000)
    assert versions[-1] == 202
    assert publisher.published + publisher.failures >= 201


def test_publish_changes__inline_off__every_message_through_the_thread(
    redis_server: RedisServer, listener: redis.client.PubSub
) -> None:
    """``inline=False`` keeps the thread-only path (as for Sentinel, Cluster and TLS)."""
    pub = RedisPublisher(redis_server.url, inline=False)
    pub.start()
    try:
        for version in range(1, 21):
            pub.publish_changes([change(version)])
        assert received(listener, 20) == list(range(1, 21))
        wait_for(lambda: pub.published == 20)
        assert pub.inline == 0 and pub._link is None
    finally:
        pub.close()
