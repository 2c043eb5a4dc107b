"""Fault drills on a throwaway redis-server, in every on/off combination of the layer flags.

In each drill: no exception reaches the caller, no wrong answer is returned,
each call takes at most the socket timeout plus 10 ms (microseconds once the
circuit is open), and the counters show what happened.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from flags.cache import LayeredCache
from flags.cache.breaker import CircuitBreaker
from flags.cache.codec import SCHEMA_VERSION
from flags.testing.client import TestFlagClient
from flags.testing.redis_server import RedisServer, free_port

from .conftest import CacheFactory
from .support import L1, L2, Source, StallMeter, on, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.flag_matrix(L1, L2)]

SOCKET_TIMEOUT = 0.05
BOUND = SOCKET_TIMEOUT + 0.010  # the contract: socket timeout plus 10 ms per call
OPEN_CIRCUIT_MEDIAN = 0.0005  # "microseconds": a generous ceiling for a loaded CI box
DATA = {f"key-{n}": {"tenant": f"t{n % 7}", "n": n, "active": True} for n in range(400)}


@pytest.fixture(autouse=True)
def stalls() -> Iterator[StallMeter]:
    """Scheduler stalls during the drill (the box may be running other suites)."""
    global _meter
    with StallMeter() as meter:
        _meter = meter
        yield meter
    _meter = None


_meter: StallMeter | None = None


@pytest.fixture
def source() -> Source:
    return Source(DATA)


@pytest.fixture
def server(redis_server: RedisServer) -> RedisServer:
    return redis_server


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the drill's own server with patient timeouts, for setting up faults."""
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def drill_cache(make_cache: CacheFactory, server: RedisServer) -> Callable[..., LayeredCache]:
    def factory(**kwargs: Any) -> LayeredCache:
        kwargs.setdefault("breaker", CircuitBreaker(3, 0.1, max_reset_timeout=0.4))
        return make_cache(url=server.url, socket_timeout=SOCKET_TIMEOUT, **kwargs)

    return factory


Interval = tuple[float, float]


class Calls:
    """Every call's answer and (start, end); checks the answers against the source."""

    def __init__(self, cache: LayeredCache) -> None:
        self.cache = cache
        self.durations: list[Interval] = []
        self.next = 0

    def run(self, n: int) -> list[Interval]:
        durations = []
        for _ in range(n):
            key = f"key-{self.next % len(DATA)}"
            self.next += 1
            started = time.perf_counter()
            value = self.cache.get(key)
            durations.append((started, time.perf_counter()))
            assert value == DATA[key], f"wrong answer for {key}: {value!r}"
        self.durations += durations
        return durations


def seconds(intervals: list[Interval]) -> list[float]:
    return [end - start for start, end in intervals]


def assert_bounded(intervals: list[Interval]) -> None:
    """Each call took at most the socket timeout plus 10 ms, not counting the time the
    machine did not run this process at all (measured by the stall meter)."""
    assert _meter is not None
    slow = [
        (round((end - start) * 1000, 1), round(_meter.excess(start, end) * 1000, 1))
        for start, end in intervals
        if end - start - _meter.excess(start, end) > BOUND
    ]
    assert not slow, f"calls over {BOUND * 1000:.0f} ms (ms, of which stalls): {slow}"


def l2(flags: TestFlagClient) -> bool:
    return on(flags, L2)


def l2_key(cache: LayeredCache, key: str) -> bytes:
    return cache.layers[1].storage_key(key)  # type: ignore[attr-defined,no-any-return]


class TestBadEntries:
    def test_garbage_bytes_in_a_key__miss_counted_and_deleted(
        self, drill_cache: Callable[..., LayeredCache], admin: redis.Redis, layer_flags: Any
    ) -> None:
        """Bytes from a broken writer are a counted miss (corruption: they fail the
        checksum, which is checked first), never a verdict."""
        cache = drill_cache()
        admin.set(l2_key(cache, "key-1"), b"\x00\x01garbage from a broken writer\xff" * 4)
        assert cache.get("key-1") == DATA["key-1"]
        stats = cache.stats()["l2"]
        assert stats["corrupt_checksum"] == (1 if l2(layer_flags) else 0)
        if l2(layer_flags):
            assert (
                admin.get(l2_key(cache, "key-1")) != b"\x00\x01garbage from a broken writer\xff" * 4
            )

    def test_entry_copied_to_another_key__checksum_miss(
        self, drill_cache: Callable[..., LayeredCache], admin: redis.Redis, layer_flags: Any
    ) -> None:
        """An entry that verifies for key-1 does not verify for key-2."""
        writer = drill_cache()
        writer.get("key-1")
        if l2(layer_flags):
            admin.set(l2_key(writer, "key-2"), admin.get(l2_key(writer, "key-1")))
        reader = drill_cache()
        assert reader.get("key-2") == DATA["key-2"]
        assert reader.stats()["l2"]["corrupt_checksum"] == (1 if l2(layer_flags) else 0)

    def test_old_schema_and_old_epoch__stale_misses(
        self, drill_cache: Callable[..., LayeredCache], admin: redis.Redis, layer_flags: Any
    ) -> None:
        """Entries of an older schema or epoch are deleted and answered from below."""
        cache = drill_cache()
        layer = cache.layers[1]
        layer.bump("drill")  # type: ignore[attr-defined]
        layer.get("warm-up")  # apply the bump: the epoch is at least 1 now
        epoch = layer.epoch  # type: ignore[attr-defined]
        for key, schema, entry_epoch in (
            ("key-1", SCHEMA_VERSION - 1, epoch),
            ("key-2", SCHEMA_VERSION, epoch - 1),
        ):
            rkey = l2_key(cache, key)
            wrong = {"tenant": "someone-else"}
            data = layer.codec.encode(  # type: ignore[attr-defined]
                rkey, wrong, epoch=entry_epoch, written_at=time.time(), schema=schema
            )
            admin.set(rkey, data)
        assert cache.get("key-1") == DATA["key-1"]
        assert cache.get("key-2") == DATA["key-2"]
        stats = cache.stats()["l2"]
        expected = 1 if l2(layer_flags) else 0
        assert (stats["stale_schema"], stats["stale_epoch"]) == (expected, expected)


class TestRedisDown:
    def test_stopped__bounded_then_microseconds__recovers_after_restart(
        self,
        drill_cache: Callable[..., LayeredCache],
        server: RedisServer,
        layer_flags: Any,
    ) -> None:
        """A refused Redis costs a bounded call, then an open circuit costs microseconds."""
        cache = drill_cache()
        calls = Calls(cache)
        calls.run(5)
        server.stop()
        assert_bounded(calls.run(10))
        open_circuit = calls.run(50)
        assert statistics.median(seconds(open_circuit)) < OPEN_CIRCUIT_MEDIAN
        stats = cache.stats()["l2"]
        if l2(layer_flags):
            assert stats["errors"] >= 3 and stats["bypass_circuit"] > 0
        else:
            assert stats["errors"] == stats["bypass_circuit"] == 0
        server.start()
        if l2(layer_flags):  # the half-open probe finds it back, and writes resume
            writes = stats["writes"]
            assert wait_until(
                lambda: (calls.run(1), cache.stats()["l2"]["writes"])[1] > writes, 3.0
            )

    def test_paused_with_sigstop__bounded_and_recovers(
        self,
        drill_cache: Callable[..., LayeredCache],
        server: RedisServer,
        layer_flags: Any,
    ) -> None:
        """A hung Redis (accepts, never answers) costs at most the socket timeout."""
        cache = drill_cache()
        calls = Calls(cache)
        calls.run(5)
        server.pause()
        try:
            assert_bounded(calls.run(10))
            open_circuit = calls.run(50)
            assert statistics.median(seconds(open_circuit)) < OPEN_CIRCUIT_MEDIAN
            if l2(layer_flags):
                assert cache.stats()["l2"]["errors"] >= 3
        finally:
            server.resume()
        if l2(layer_flags):
            writes = cache.stats()["l2"]["writes"]
            assert wait_until(
                lambda: (calls.run(1), cache.stats()["l2"]["writes"])[1] > writes, 3.0
            )
        assert_bounded(calls.durations)

    def test_slowed_with_debug_sleep__bounded(
        self,
        drill_cache: Callable[..., LayeredCache],
        server: RedisServer,
        admin: redis.Redis,
        layer_flags: Any,
    ) -> None:
        """DEBUG SLEEP blocks the server; calls time out at 50 ms, then skip it."""
        cache = drill_cache()
        calls = Calls(cache)
        calls.run(5)
        sleeper = threading.Thread(target=admin.execute_command, args=("DEBUG", "SLEEP", "0.6"))
        sleeper.start()
        pinger = redis.Redis.from_url(server.url, socket_timeout=0.02)
        try:
            # Wait until the server is really asleep before measuring.
            assert wait_until(lambda: not _answers(pinger), 2.0)
            assert_bounded(calls.run(20))
            if l2(layer_flags):
                assert cache.stats()["l2"]["errors"] >= 1
        finally:
            sleeper.join()
            pinger.close()

    def test_flushed_mid_run__no_wrong_answer_and_layer_refills(
        self,
        drill_cache: Callable[..., LayeredCache],
        admin: redis.Redis,
        source: Source,
        layer_flags: Any,
    ) -> None:
        """FLUSHALL (entries and epoch gone) leaves misses, never wrong answers."""
        writer, reader = drill_cache(), drill_cache()
        Calls(writer).run(20)
        admin.flushall()
        reader_calls = Calls(reader)
        reader_calls.run(20)
        Calls(drill_cache()).run(20)
        assert_bounded(reader_calls.durations)
        if l2(layer_flags):
            assert admin.dbsize() > 0

    def test_connection_reset__one_error_no_retry(
        self,
        drill_cache: Callable[..., LayeredCache],
        admin: redis.Redis,
        layer_flags: Any,
    ) -> None:
        """A reset connection is an error for that call only; the next call reconnects."""
        cache = drill_cache()
        calls = Calls(cache)
        calls.run(5)
        admin.client_kill_filter(_type="normal", skipme=True)
        calls.run(5)
        assert_bounded(calls.durations[5:])
        if l2(layer_flags):
            assert cache.stats()["l2"]["errors"] <= 1
            assert cache.stats()["l2"]["writes"] > 5

    def test_out_of_memory__writes_fail_reads_still_served(
        self,
        drill_cache: Callable[..., LayeredCache],
        admin: redis.Redis,
        layer_flags: Any,
    ) -> None:
        """OOM refuses writes: counted as errors, answers still right."""
        cache = drill_cache()
        calls = Calls(cache)
        calls.run(5)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            calls.run(10)
        finally:
            admin.config_set("maxmemory", "0")
        assert_bounded(calls.durations)
        if l2(layer_flags):
            assert cache.stats()["l2"]["errors"] >= 1

    def test_readonly_replica__writes_fail_reads_still_served(
        self,
        drill_cache: Callable[..., LayeredCache],
        admin: redis.Redis,
        layer_flags: Any,
    ) -> None:
        """READONLY (a failover left us on a replica) is an error, not an exception."""
        cache = drill_cache()
        calls = Calls(cache)
        calls.run(5)
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
        try:
            calls.run(10)
        finally:
            admin.execute_command("REPLICAOF", "NO", "ONE")
        assert_bounded(calls.durations)
        if l2(layer_flags):
            assert cache.stats()["l2"]["errors"] >= 1


class TestAsyncFaults:
    @pytest.mark.parametrize("fault", ["stop", "pause"])
    def test_aget__redis_dead__bounded_and_correct(
        self,
        drill_cache: Callable[..., LayeredCache],
        server: RedisServer,
        layer_flags: Any,
        fault: str,
    ) -> None:
        """The async path obeys the same bound on redis.asyncio."""
        cache = drill_cache()

        async def scenario() -> list[Interval]:
            durations = []
            for n in range(25):
                if n == 5:
                    server.stop() if fault == "stop" else server.pause()
                key = f"key-{n}"
                started = time.perf_counter()
                value = await cache.aget(key)
                durations.append((started, time.perf_counter()))
                assert value == DATA[key]
            for layer in cache.layers:
                aclose = getattr(layer, "aclose", None)
                if aclose is not None:
                    await aclose()
            return durations

        try:
            durations = asyncio.run(scenario())
        finally:
            server.resume()
        assert_bounded(durations[5:])
        if l2(layer_flags):
            assert cache.stats()["l2"]["errors"] >= 1
            assert cache.stats()["l2"]["bypass_circuit"] > 0


class TestInvalidationChannel:
    def test_channel_paused__noticed_and_memory_bounded(
        self,
        drill_cache: Callable[..., LayeredCache],
        server: RedisServer,
    ) -> None:
        """A silent channel is noticed by its heartbeat; answers stay right meanwhile."""
        cache = drill_cache()
        cache.get("key-1")
        assert cache.channel_up
        server.pause()
        try:
            assert wait_until(lambda: not cache.channel_up, 3.0)
            assert cache.get("key-1") == DATA["key-1"]
        finally:
            server.resume()
        # Same connection, nothing was lost (Redis itself was frozen): it is heard again.
        assert wait_until(lambda: cache.channel_up, 3.0)

    def test_channel_dropped__memory_cleared_on_reconnect(
        self,
        drill_cache: Callable[..., LayeredCache],
        server: RedisServer,
    ) -> None:
        """After a reconnect, whatever might have been missed is dropped from memory."""
        cache = drill_cache()
        cache.get("key-1")
        connects = cache._channel.connects  # type: ignore[union-attr]
        server.stop()
        assert wait_until(lambda: not cache.channel_up, 3.0)
        assert cache.get("key-2") == DATA["key-2"]
        server.start()
        assert wait_until(lambda: cache._channel.connects > connects, 5.0)  # type: ignore[union-attr]
        assert cache.channel_up
        assert len(cache.layers[0]) == 0


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
