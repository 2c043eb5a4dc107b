"""DirectReader: the Redis layer's GETs on connections of its own, against real servers."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from flags.cache.codec import Entry
from flags.cache.direct import AsyncDirectReader, DirectReader
from flags.cache.redis import RedisLayer
from flags.testing.redis_server import RedisServer

from .support import CACHE, SECRET

pytestmark = pytest.mark.redis


@pytest.fixture
def raw(redis_url: str, key_prefix: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    keys = list(client.scan_iter(match=f"{key_prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the test's own server, holding ``a`` and ``b``."""
    client = redis.Redis.from_url(redis_server.url)
    client.set("a", b"value of a")
    client.set("b", b"value of b")
    yield client
    client.close()


def reader(url: str, **kwargs: object) -> DirectReader:
    return DirectReader(url, socket_timeout=0.05, connect_timeout=0.05, **kwargs)  # type: ignore[arg-type]


def areader(url: str, **kwargs: object) -> AsyncDirectReader:
    return AsyncDirectReader(url, socket_timeout=0.05, connect_timeout=0.05, **kwargs)  # type: ignore[arg-type]


def test_direct__get__returns_the_bytes_or_none(
    redis_url: str, raw: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}a".encode()
    raw.set(key, b"\x00value\xff")
    r = reader(redis_url)
    try:
        assert r.get(key) == b"\x00value\xff"
        assert r.get(f"{key_prefix}missing".encode()) is None
        assert r.idle == 1  # the connection is kept for the next read
    finally:
        r.close()
    assert r.idle == 0


def test_direct__database_in_the_url__is_the_one_read(
    redis_url: str, raw: redis.Redis, key_prefix: str
) -> None:
    """The connection arguments come from the URL, as redis-py builds them."""
    key = f"{key_prefix}db".encode()
    other = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/5")
    try:
        other.set(key, b"in five", px=60_000)
        r0, r5 = reader(redis_url), reader(redis_url.rsplit("/", 1)[0] + "/5")
        assert r5.get(key) == b"in five"
        assert r0.get(key) is None
        r0.close()
        r5.close()
    finally:
        other.delete(key)
        other.close()


def test_direct__read_timed_out__its_late_reply_never_answers_a_later_read(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    """What the pool's per-checkout poll guards against: a reply that arrives after
    its read gave up must not answer the next read on that connection (redis-py's
    connection drops its socket on a failed read; the reader relies on that and
    drops it too on anything else)."""
    r = reader(redis_server.url, max_idle=1)
    assert r.get(b"a") == b"value of a"
    redis_server.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            r.get(b"a")
    finally:
        redis_server.resume()
    assert admin.ping()  # the server has run the queued GET a and written its reply
    assert r.get(b"b") == b"value of b"
    assert r.get(b"a") == b"value of a"
    r.close()


def test_direct__url_asking_for_decoded_responses__still_reads_bytes(
    redis_url: str, raw: redis.Redis, key_prefix: str
) -> None:
    """Envelopes are bytes: a str back would fail every check and read as corrupt."""
    key = f"{key_prefix}bytes".encode()
    raw.set(key, b"\xfa\x1cenvelope")
    r = reader(redis_url + "?decode_responses=True")
    assert r.get(key) == b"\xfa\x1cenvelope"
    r.close()


def test_direct__server_down__reads_raise_and_reconnect_when_it_is_back(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    admin.set("k", b"before")
    r = reader(redis_server.url)
    assert r.get(b"k") == b"before"
    redis_server.stop()
    with pytest.raises(redis.ConnectionError):
        r.get(b"k")
    redis_server.start()
    admin.set("k", b"after")
    assert r.get(b"k") == b"after"
    r.close()


def test_direct__kept_connections_closed_while_idle__next_reads_do_not_fail(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    """A restart, or the server's idle timeout, closes kept connections behind the
    reader's back: the next read on each must reconnect, not fail (a failed read
    would count against the breaker and the guard)."""
    admin.set("k", b"v")
    r = reader(redis_server.url, max_idle=4)
    barrier = threading.Barrier(4)

    def read() -> None:
        barrier.wait()
        for _ in range(50):
            r.get(b"k")

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = r.idle
    assert kept >= 2  # more than one connection kept, so more than one goes stale
    killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= kept
    assert [r.get(b"k") for _ in range(kept + 1)] == [b"v"] * (kept + 1)

    redis_server.stop()  # a restart: every kept connection is gone at once
    redis_server.start()
    admin.set("k", b"after")
    assert [r.get(b"k") for _ in range(kept + 1)] == [b"after"] * (kept + 1)
    r.close()


def test_redis__restarted_between_reads__is_a_miss_not_an_error(
    redis_server: RedisServer, key_prefix: str
) -> None:
    layer = RedisLayer(redis_server.url, secret=SECRET, prefix=key_prefix)
    layer.bind(CACHE)
    layer.set("k", Entry({"v": 3}, time.time()))
    got = layer.get("k")
    assert got is not None and got.value == {"v": 3}
    redis_server.stop()
    redis_server.start()  # nothing persisted: the entry is gone, the kept connection too
    assert layer.get("k") is None
    assert layer.breaker.clean and layer.breaker.state == "closed"
    layer.close()


def test_direct__threads__each_read_gets_its_own_reply(
    redis_url: str, raw: redis.Redis, key_prefix: str
) -> None:
    keys = [f"{key_prefix}t{i}".encode() for i in range(8)]
    for i, key in enumerate(keys):
        raw.set(key, str(i).encode())
    r = reader(redis_url, max_idle=2)
    wrong: list[tuple[bytes, bytes | None]] = []
    start = threading.Barrier(len(keys))

    def run(i: int) -> None:
        start.wait()
        for _ in range(300):
            got = r.get(keys[i])
            if got != str(i).encode():
                wrong.append((keys[i], got))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert 1 <= r.idle <= 2  # no more kept than max_idle, however many threads read
    r.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_direct__forked_child__reads_on_its_own_connection(
    redis_url: str, raw: redis.Redis, key_prefix: str
) -> None:
    """A child must not share the parent's socket (their replies would interleave)."""
    key = f"{key_prefix}fork".encode()
    raw.set(key, b"shared")
    r = reader(redis_url)
    assert r.get(key) == b"shared" and r.idle == 1
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = r.idle == 0 and r.get(key) == b"shared"
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert r.idle == 1 and r.get(key) == b"shared"  # the parent's connection still works
    r.close()


def test_redis__own_client__reads_direct_and_a_passed_client__is_used_as_is(
    redis_url: str, key_prefix: str
) -> None:
    class Counting(redis.Redis):
        gets = 0

        def get(self, name: object) -> object:  # type: ignore[override]
            Counting.gets += 1
            return super().get(name)  # type: ignore[arg-type]

    passed = Counting.from_url(redis_url)
    theirs = RedisLayer(redis_url, secret=SECRET, prefix=key_prefix, client=passed)
    ours = RedisLayer(redis_url, secret=SECRET, prefix=key_prefix)
    for layer in (theirs, ours):
        layer.bind(CACHE)
    try:
        ours.set("k", Entry({"v": 1}, time.time()))
        got_ours, got_theirs = ours.get("k"), theirs.get("k")
        assert got_ours is not None and got_ours.value == {"v": 1}
        assert got_theirs is not None and got_theirs.value == {"v": 1}
        assert Counting.gets == 1  # only the layer given the client called its get
    finally:
        ours.delete("k")
        ours.close()
        theirs.close()
        passed.close()


def test_async_direct__get__returns_the_bytes_or_none(
    redis_url: str, raw: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}async".encode()
    raw.set(key, b"\x00async\xff")

    async def run() -> None:
        r = areader(redis_url)
        assert await r.get(key) == b"\x00async\xff"
        assert await r.get(f"{key_prefix}missing".encode()) is None
        assert r.idle == 1
        await r.aclose()
        assert r.idle == 0

    asyncio.run(run())


def test_async_direct__read_cancelled__its_late_reply_never_answers_a_later_read(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    """A task cancelled while its GET is on the wire (a request timeout in the app,
    say) leaves a reply behind: the connection must not carry it to the next read."""

    async def run() -> None:
        r = AsyncDirectReader(
            redis_server.url, socket_timeout=10.0, connect_timeout=1.0, max_idle=1
        )
        assert await r.get(b"a") == b"value of a"
        redis_server.pause()
        try:
            conn = r._idle[-1]  # the connection the read will take
            task = asyncio.create_task(r.get(b"a"))
            # Cancel once the GET is sent and the read waits for its reply (a cancel
            # before that is held by redis-py until its read timeout).
            while conn._reader is None or conn._reader._waiter is None:  # type: ignore[attr-defined]
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            redis_server.resume()
        assert admin.ping()  # the server has answered the cancelled GET by now
        assert await r.get(b"b") == b"value of b"
        assert await r.get(b"a") == b"value of a"
        await r.aclose()

    asyncio.run(run())


def test_async_direct__read_timed_out__raises_and_the_next_read_is_right(
    redis_server: RedisServer, admin: redis.Redis
) -> None:

    async def run() -> None:
        r = areader(redis_server.url, max_idle=1)
        assert await r.get(b"a") == b"value of a"
        redis_server.pause()
        try:
            with pytest.raises(redis.TimeoutError):
                await r.get(b"a")
        finally:
            redis_server.resume()
        assert admin.ping()
        assert await r.get(b"b") == b"value of b"
        await r.aclose()

    asyncio.run(run())


def test_async_direct__server_restarted__kept_connection_reconnects(
    redis_server: RedisServer, admin: redis.Redis
) -> None:
    admin.set("k", b"before")

    async def run() -> None:
        r = areader(redis_server.url)
        assert await r.get(b"k") == b"before"
        redis_server.stop()
        redis_server.start()
        admin.set("k", b"after")
        assert await r.get(b"k") == b"after"
        await r.aclose()

    asyncio.run(run())


def test_redis__async_reads__go_direct_on_each_loop(redis_url: str, key_prefix: str) -> None:
    """An own-client layer reads through one AsyncDirectReader per event loop."""
    layer = RedisLayer(redis_url, secret=SECRET, prefix=key_prefix)
    layer.bind(CACHE)
    layer.set("k", Entry({"v": 2}, time.time()))

    async def read() -> tuple[object, int]:
        got = await layer.aget("k")
        side = layer._aclient()
        assert side.reader is not None
        idle = side.reader.idle
        await layer.aclose()
        return (got.value if got is not None else None), idle

    try:
        assert asyncio.run(read()) == ({"v": 2}, 1)
        assert asyncio.run(read()) == ({"v": 2}, 1)  # a second loop, its own connections
    finally:
        layer.delete("k")
        layer.close()
