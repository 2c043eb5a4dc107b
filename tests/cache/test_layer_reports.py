"""What a layer tells others: counters for rollout-plan guards, a dead Redis to the
guard, and verification verdicts that a revocation made moot."""

from __future__ import annotations

import threading

import pytest

from flags.cache import Mode
from flags.cache.breaker import CircuitBreaker
from flags.testing.client import TestFlagClient
from flags.testing.redis_server import RedisServer

from .conftest import CacheFactory
from .support import L1, L2, on, wait_until
from .test_guard import unreachable_guard


@pytest.mark.redis
@pytest.mark.flag_matrix(L1, L2)
class TestLayerReports:
    def test_counters__reads_and_hits__added_to_the_flag_client(
        self, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """Each live layer's reads and hits reach FlagClient.count under its flag key
        (what ``POST /sdk/v1/metrics`` carries to plan guards)."""
        cache = make_cache()
        for _ in range(3):
            assert cache.get("key-a") is not None
        live = [flag for flag in (L1, L2) if on(layer_flags, flag)]
        expected_reads = {flag: cache.stats()[flag.rsplit(".", 1)[1]]["hits"] for flag in live}

        def reported() -> bool:
            counters = layer_flags.counters()
            return all(
                counters.get(flag, {}).get("reads", 0) >= 1
                and counters.get(flag, {}).get("hits", 0) == expected_reads[flag]
                for flag in live
            )

        assert wait_until(reported, timeout=5.0)
        for flag in (L1, L2):
            if flag not in live:
                assert layer_flags.counters().get(flag, {}).get("reads", 0) == 0

    def test_guard__redis_dead_behind_an_open_circuit__trips_on_error_rate(
        self,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
        redis_server: RedisServer,
    ) -> None:
        """With the default breaker (three failures open it), calls the open circuit
        skips still count as failed calls, so a dead Redis trips the layer's guard."""
        guard = unreachable_guard(min_samples=5, window=30.0)
        cache = make_cache(url=redis_server.url, guard=guard, breaker=CircuitBreaker(3, 30.0))
        redis_server.stop()
        for n in range(20):
            cache.get("key-a" if n % 2 else "key-b")
            cache.invalidate("key-a")
        if not on(layer_flags, L2):
            assert cache.modes()["l2"] is Mode.OFF
            return
        assert cache.stats()["l2"]["bypass_circuit"] > 0
        assert wait_until(lambda: cache.modes()["l2"] is Mode.OFF, timeout=5.0)


@pytest.mark.redis
@pytest.mark.flag_matrix(L1, L2)
def test_verify__key_invalidated_since_the_hit__no_mismatch(
    make_cache: CacheFactory, layer_flags: TestFlagClient
) -> None:
    """A hit served just before a revocation is re-read after it: the truth moved on,
    the cache was not wrong, and no mismatch is counted."""
    record = {"tenant": "acme", "scopes": ["read"], "active": True}
    revoked = threading.Event()
    checking = threading.Event()
    calls: list[str] = []

    def loader(key: str) -> object:
        calls.append(key)
        if len(calls) <= 1:
            return record
        checking.set()  # the background verification (or, layers off, a plain load)
        revoked.wait(5.0)
        return None  # by now the key is revoked in the database

    cache = make_cache(loader=loader, verify_share=1.0)
    assert cache.get("key-a") == record  # cold: loaded and filled
    if not (on(layer_flags, L1) or on(layer_flags, L2)):
        return  # no layer: nothing is served from a cache, nothing to verify
    assert cache.get("key-a") == record  # a hit: its verification starts in the background
    assert checking.wait(5.0)
    cache._gens.note("key-a")  # the revocation's invalidation lands first
    revoked.set()
    assert cache.wait_idle(5.0)
    assert all(cache.stats()[layer]["mismatch_verify"] == 0 for layer in ("l1", "l2"))
    assert all(cache.stats()[layer]["verify_verify"] == 0 for layer in ("l1", "l2"))
