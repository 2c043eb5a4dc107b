"""The cache's Redis layer and invalidation on Redis Cluster and Sentinel, through failover.

Each test starts its own topology (``tests/scale/topology.py``); the machine's Redis
is never touched. Traffic runs in a thread while a master is SIGKILLed: every answer
is checked against the source of truth (0 wrong answers), no call may raise (0
exceptions), reads are misses (the loader answers) while the slots or the master are
gone, and the Redis layer serves hits again once the replica took over.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
import redis.cluster
from redis.crc import key_slot

from flags.cache import CircuitBreaker, LayeredCache, MemoryLayer, RedisLayer
from flags.cache.codec import Entry
from flags.errors import ValidationError
from flags.redis_url import redis_client
from flags.testing import wait_for
from flags.testing.client import TestFlagClient

from .topology import ClusterSet, SentinelSet

SECRET = b"scale-test-secret-0123456789"
CACHE = "scale.cache"
KEYS = [f"key-{i}" for i in range(40)]


def _truth() -> dict[str, Any]:
    return {key: {"owner": key, "n": i} for i, key in enumerate(KEYS)}


class Traffic:
    """Reads every key in a loop from a thread; counts wrong answers and exceptions."""

    def __init__(self, cache: LayeredCache, truth: dict[str, Any]) -> None:
        self.cache = cache
        self.truth = truth
        self.reads = 0
        self.wrong: list[tuple[str, Any]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for key in KEYS[:-1]:  # the last key is the one tests invalidate
                try:
                    got = self.cache.get(key)
                except BaseException as exc:  # the property under test: nothing escapes
                    self.errors.append(exc)
                    continue
                self.reads += 1
                if got != self.truth[key]:
                    self.wrong.append((key, got))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _flags() -> TestFlagClient:
    return TestFlagClient({f"{CACHE}.l1": True, f"{CACHE}.l2": True})


def _cache(url: str, loader: Any, *, memory_ttl: float = 0.05) -> LayeredCache:
    """Memory (short-lived, so reads reach Redis) over Redis at ``url``."""
    layer = RedisLayer(
        url,
        secret=SECRET,
        prefix="scale:",
        socket_timeout=0.3,
        connect_timeout=0.3,
        breaker=CircuitBreaker(3, 0.2),
    )
    return LayeredCache(
        CACHE, [MemoryLayer(ttl=memory_ttl), layer], loader, _flags(), verify_share=0.0
    )


def _l2_hits(cache: LayeredCache) -> int:
    return int(cache.stats()["l2"]["hits"])


class TestHashTags:
    def test_keys__entry_and_tombstone__share_a_slot(self) -> None:
        """Every script touches one Cluster slot, whatever the cache key holds."""
        layer = RedisLayer("redis://127.0.0.1:1/0", secret=SECRET)
        layer.bind(CACHE)
        for key in ["", "a", "}", "}x", "a}b", "{a}", "{", "ü-ключ", "k" * 300]:
            entry, tomb = layer._keys(key)
            assert key_slot(entry) == key_slot(tomb), key
            assert entry == layer.storage_key(key)
        slots = {key_slot(layer.storage_key(k)) for k in KEYS}
        assert len(slots) > len(KEYS) // 2  # keys spread over the cluster
        assert layer.storage_key("}") != layer.storage_key("~}")

    def test_prefix_with_brace__validation_error(self) -> None:
        with pytest.raises(ValidationError) as caught:
            RedisLayer("redis://127.0.0.1:1/0", secret=SECRET, prefix="app:{x}:")
        assert caught.value.field == "prefix"

    def test_bad_url__validation_error_on_redis_url(self) -> None:
        with pytest.raises(ValidationError) as caught:
            RedisLayer("redis+cluster://h/3", secret=SECRET)
        assert caught.value.field == "redis_url"


@pytest.mark.redis
@pytest.mark.slow
class TestCluster:
    def test_redis_layer__cluster__scripts_and_reads_on_every_master(
        self, cluster_set: ClusterSet
    ) -> None:
        """Write (script), read, invalidate (script) and epochs work on a cluster,
        with entries spread over its masters."""
        layer = RedisLayer(cluster_set.url, secret=SECRET, prefix="scale:", socket_timeout=0.5)
        layer.bind(CACHE)
        try:
            for i, key in enumerate(KEYS):
                layer.set(key, Entry({"n": i}, time.time()))
            got = [layer.get(key) for key in KEYS]
            assert [g.value if g else None for g in got] == [{"n": i} for i in range(len(KEYS))]
            layer.invalidate(KEYS[0], 1.0)
            assert layer.get(KEYS[0]) is None

            async def async_side() -> list[Any]:
                try:
                    await layer.aset(KEYS[1], Entry({"n": "async"}, time.time()))
                    return [await layer.aget(key) for key in KEYS[:3]]
                finally:
                    await layer.aclose()

            got = asyncio.run(async_side())
            assert [g.value if g else None for g in got] == [None, {"n": "async"}, {"n": 2}]
            client = redis_client(cluster_set.url)
            assert isinstance(client, redis.cluster.RedisCluster)
            owners = {client.get_node_from_key(layer.storage_key(k)).port for k in KEYS}
            assert owners == set(cluster_set.master_ports())
            client.close()
        finally:
            layer.close()

    def test_layered_cache__cluster_master_killed__misses_then_hits_no_wrong_answers(
        self, cluster_set: ClusterSet
    ) -> None:
        """A master dies mid-traffic: 0 wrong answers, 0 exceptions; its keys are
        misses (the loader answers) until its replica takes over; then L2 hits again."""
        truth = _truth()
        cache = _cache(cluster_set.url, truth.get).start(wait=5.0)
        try:
            with Traffic(cache, truth) as traffic:
                wait_for(lambda: _l2_hits(cache) > 50, 20, "L2 hits before the kill")
                loads_before = cache.stats()["cache"]["loads"]
                victim = cluster_set.master_ports()[0]
                cluster_set.node(victim).kill()
                wait_for(
                    lambda: cache.stats()["cache"]["loads"] > loads_before + 5,
                    20,
                    "misses served by the loader while a master is gone",
                )
                cluster_set.wait_healthy(30)
                hits_after = _l2_hits(cache)
                wait_for(
                    lambda: _l2_hits(cache) > hits_after + 50, 30, "L2 hits after the takeover"
                )
            assert traffic.errors == []
            assert traffic.wrong == []
            assert traffic.reads > 0
        finally:
            cache.close()


@pytest.mark.redis
@pytest.mark.slow
class TestSentinel:
    def test_layered_cache__sentinel_failover__invalidations_and_l2_flow_again(
        self, sentinel_set: SentinelSet
    ) -> None:
        """Two caches (two processes' worth) on a Sentinel URL; the master is killed:
        0 wrong answers, 0 exceptions, misses meanwhile; within 5 s of the promotion
        an invalidation sent by one cache reaches the other and L2 serves hits again."""
        truth = _truth()
        reader = _cache(sentinel_set.url, truth.get, memory_ttl=60.0).start(wait=5.0)
        writer = _cache(sentinel_set.url, truth.get).start(wait=5.0)
        try:
            with Traffic(writer, truth) as traffic:
                wait_for(lambda: _l2_hits(writer) > 50, 20, "L2 hits before the kill")
                old = sentinel_set.kill_master().port
                sentinel_set.wait_promoted(old)
                promoted_at = time.monotonic()
                wait_for(lambda: reader.channel_up, 5, "the reader's invalidation channel back")
                hits = _l2_hits(writer)
                wait_for(lambda: _l2_hits(writer) > hits + 20, 5, "L2 hits after the promotion")
                assert time.monotonic() - promoted_at <= 5.0

                # An invalidation from the writer reaches the reader's memory.
                key = KEYS[-1]
                assert reader.get(key) == truth[key]  # now in the reader's memory (60 s)
                truth[key] = {"owner": key, "n": -1}
                sent = time.monotonic()
                writer.invalidate(key)
                wait_for(lambda: reader.get(key) == truth[key], 5, "the invalidation to arrive")
                assert time.monotonic() - sent <= 5.0
            assert traffic.errors == []
            assert traffic.wrong == []
            assert traffic.reads > 0
        finally:
            reader.close()
            writer.close()


def test_layered_cache__cluster__every_flag_combination__serves_the_truth(
    cluster_set: ClusterSet, flag_client: TestFlagClient
) -> None:
    """On a Cluster, every on/off combination of the layers and their shadow flags gives the
    loader's answers (one cluster for all sixteen: starting one per run would cost minutes)."""
    truth = _truth()
    keys = sorted(truth)[:40]
    flag_keys = [f"{CACHE}.l1", f"{CACHE}.l2", f"{CACHE}.l1.shadow", f"{CACHE}.l2.shadow"]
    layer = RedisLayer(cluster_set.url, secret=SECRET, prefix="scale-matrix:")
    cache = LayeredCache(
        CACHE, [MemoryLayer(ttl=60.0), layer], truth.get, flag_client, verify_share=0.0
    ).start(wait=5.0)
    try:
        for values in itertools.product((False, True), repeat=len(flag_keys)):
            for key, on in zip(flag_keys, values, strict=True):
                flag_client.set(key, on)
            for _ in range(2):  # the second pass reads what the first one filled
                assert [cache.get(k) for k in keys] == [truth[k] for k in keys], values
    finally:
        cache.close()
