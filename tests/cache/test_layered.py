"""LayeredCache end to end on a real Redis, in every on/off combination of its layer flags,
each through both drivers of the read core: ``get`` and ``aget`` (the ``read`` fixture).

Each test asserts what must hold in its combination: a layer that is off is
neither read nor written, and the answer is always the loader's.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from prometheus_client import REGISTRY, generate_latest

from flags.cache import LayeredCache, Mode
from flags.cache.codec import Entry
from flags.declarations import declared_flags
from flags.model import FlagState
from flags.testing.client import TestFlagClient

from .conftest import CacheFactory, Reader
from .support import CACHE, L1, L2, AsyncSource, Source, default_data, on, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.flag_matrix(L1, L2)]

KEY_A = default_data()["key-a"]
WRONG = {"tenant": "acme", "scopes": [], "active": False}  # what a broken writer stores


def in_redis(raw: redis.Redis, cache: LayeredCache, key: str) -> bool:
    return bool(raw.exists(cache.layers[1].storage_key(key)))  # type: ignore[attr-defined]


def broken_write(cache: LayeredCache, key: str, value: object = WRONG) -> None:
    """Store a well-formed envelope holding a wrong value: the incident's broken writer."""
    layer = cache.layers[1]
    layer.get("warm-up")  # apply pending epoch bumps, as a real write would
    layer.set(key, Entry(value, time.time()))


def next_version(flags: TestFlagClient, key: str) -> int:
    state = flags.state(key)
    return state.version + 1 if state is not None else 1


def killed(flags: TestFlagClient, key: str) -> FlagState:
    """The state a kill produces: killed, one version later (versions only grow)."""
    return FlagState(
        enabled=True,
        rollout=100,
        killed=True,
        kill_reason="test",
        version=next_version(flags, key),
    )


class TestReadThrough:
    def test_get__repeated__loader_called_once_if_any_layer_is_on(
        self, read: Reader, make_cache: CacheFactory, source: Source, layer_flags: TestFlagClient
    ) -> None:
        """The value is the loader's; a live layer spares the second lookup."""
        cache = make_cache()
        assert read(cache, "key-a") == KEY_A
        assert read(cache, "key-a") == KEY_A
        cached = on(layer_flags, L1) or on(layer_flags, L2)
        assert source.count("key-a") == (1 if cached else 2)

    def test_get__fills_exactly_the_live_layers(
        self,
        read: Reader,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
        raw_redis: redis.Redis,
    ) -> None:
        """Memory holds the key iff l1 is on; Redis iff l2 is on."""
        cache = make_cache()
        read(cache, "key-a")
        assert (cache.layers[0].get("key-a") is not None) == on(layer_flags, L1)
        assert in_redis(raw_redis, cache, "key-a") == on(layer_flags, L2)

    def test_get__fresh_instance__reads_what_another_process_wrote(
        self, read: Reader, make_cache: CacheFactory, source: Source, layer_flags: TestFlagClient
    ) -> None:
        """A second cache (another process) is served by Redis when l2 is on."""
        read(make_cache(), "key-a")
        second = make_cache()
        assert read(second, "key-a") == KEY_A
        assert source.count("key-a") == (1 if on(layer_flags, L2) else 2)
        if on(layer_flags, L2):
            assert second.stats()["l2"]["hits"] == 1

    def test_get__unknown_key__negative_cached_in_memory_only(
        self,
        read: Reader,
        make_cache: CacheFactory,
        source: Source,
        layer_flags: TestFlagClient,
        raw_redis: redis.Redis,
    ) -> None:
        """ "No such key" is remembered by l1, never by Redis (by default)."""
        cache = make_cache()
        assert read(cache, "nope") is None
        assert read(cache, "nope") is None
        assert source.count("nope") == (1 if on(layer_flags, L1) else 2)
        assert not in_redis(raw_redis, cache, "nope")

    def test_get__remote_negatives_opted_in__negative_lands_in_redis(
        self,
        read: Reader,
        make_cache: CacheFactory,
        source: Source,
        layer_flags: TestFlagClient,
        raw_redis: redis.Redis,
    ) -> None:
        """A cache may opt in to remote negatives; they still answer None."""
        cache = make_cache(remote_negatives=True)
        assert read(cache, "nope") is None
        assert in_redis(raw_redis, cache, "nope") == on(layer_flags, L2)
        assert read(make_cache(remote_negatives=True), "nope") is None
        assert source.count("nope") == (1 if on(layer_flags, L2) else 2)

    def test_get__negative_ttl_elapsed__asks_the_loader_again(
        self, read: Reader, make_cache: CacheFactory, source: Source
    ) -> None:
        """Negatives live negative_ttl seconds, then the key is looked up again."""
        cache = make_cache(negative_ttl=0.05)
        read(cache, "nope")
        source.data["nope"] = {"tenant": "new"}
        assert wait_until(lambda: read(cache, "nope") == {"tenant": "new"}, timeout=2.0)

    def test_get__max_age_elapsed__reloads_whatever_layer_holds_it(
        self, read: Reader, make_cache: CacheFactory, source: Source
    ) -> None:
        """A positive entry never outlives max_age, in memory or in Redis."""
        cache = make_cache(max_age=0.1)
        read(cache, "key-a")
        source.data["key-a"] = {"tenant": "changed"}
        assert wait_until(lambda: read(cache, "key-a") == {"tenant": "changed"}, timeout=2.0)

    def test_get__loader_raises__caller_sees_it_and_nothing_is_cached(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """The source of truth's errors are the caller's; the cache stores nothing."""
        fail = {"on": True}

        def loader(key: str) -> object:
            if fail["on"]:
                raise LookupError("database down")
            return {"ok": key}

        cache = make_cache(loader=loader)
        with pytest.raises(LookupError):
            read(cache, "key-a")
        fail["on"] = False
        assert read(cache, "key-a") == {"ok": "key-a"}

    def test_get__tuple_from_loader__compares_equal_to_its_json_copy(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """Verification compares decoded values: a tuple and its JSON list agree."""
        cache = make_cache(loader=lambda key: {"scopes": ("read", "write")}, verify_share=1.0)
        read(cache, "key-a")
        read(make_cache(loader=lambda key: {"scopes": ("read", "write")}), "key-a")
        read(cache, "key-a")
        cache.wait_idle()
        stats = cache.stats()
        assert stats["l1"]["mismatch_verify"] == stats["l2"]["mismatch_verify"] == 0


class TestFlagsPerCall:
    def test_modes__follow_the_tenant(
        self, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """Layer flags are evaluated with the caller's tenant."""
        cache = make_cache()
        layer_flags.set(L2, not on(layer_flags, L2), tenant="acme")
        expected_other = Mode.LIVE if on(layer_flags, L2) else Mode.OFF
        assert cache.modes("acme")["l2"] is (Mode.OFF if on(layer_flags, L2) else Mode.LIVE)
        assert cache.modes("globex")["l2"] is expected_other

    def test_get__layer_on_for_one_tenant__writes_only_for_that_tenant(
        self,
        read: Reader,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
        raw_redis: redis.Redis,
    ) -> None:
        """Reads and writes alike follow the tenant's flag answer."""
        layer_flags.set(L2, True, tenant="acme")
        layer_flags.set(L2, False, tenant="globex")
        cache = make_cache()
        read(cache, "key-a", tenant="globex")
        assert not in_redis(raw_redis, cache, "key-a")
        cache.layers[0].clear()
        read(cache, "key-a", tenant="acme")
        assert in_redis(raw_redis, cache, "key-a")

    def test_kill_l2__next_call_skips_it_and_memory_drops_its_copies(
        self, read: Reader, make_cache: CacheFactory, source: Source, layer_flags: TestFlagClient
    ) -> None:
        """Killing l2 stops its use at once; what l1 copied from it goes with it."""
        read(make_cache(), "key-a")
        reader = make_cache()
        read(reader, "key-a")  # with l1 and l2 on, l1 now holds a copy from l2
        from_l2 = [e for e in reader.layers[0].entries.values() if e.source == "l2"]
        assert bool(from_l2) == (on(layer_flags, L1) and on(layer_flags, L2))
        before = reader.stats()["l2"]["hits"] + reader.stats()["l2"]["misses"]
        loads = source.count("key-a")
        layer_flags.set_state(L2, killed(layer_flags, L2))
        assert not [e for e in reader.layers[0].entries.values() if e.source == "l2"]
        assert read(reader, "key-a") == KEY_A
        assert reader.stats()["l2"]["hits"] + reader.stats()["l2"]["misses"] == before
        copied = on(layer_flags, L1) and bool(from_l2)
        expect_load = copied or not on(layer_flags, L1)
        assert source.count("key-a") == loads + (1 if expect_load else 0)

    @pytest.mark.parametrize("how", ["kill", "disable"])
    def test_off_then_on__entries_written_before_are_never_served(
        self,
        read: Reader,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
        raw_redis: redis.Redis,
        how: str,
    ) -> None:
        """Kill means gone: a wrong entry from before the kill never comes back."""
        l2 = on(layer_flags, L2)
        cache = make_cache()
        if l2:
            broken_write(cache, "key-a")
        off = (
            killed(layer_flags, L2)
            if how == "kill"
            else FlagState(enabled=False, version=next_version(layer_flags, L2))
        )
        layer_flags.set_state(L2, off)
        layer_flags.set(L2, l2)
        fresh = make_cache()
        assert read(fresh, "key-a") == KEY_A
        assert read(cache, "key-a") == KEY_A
        if l2:
            assert fresh.stats()["l2"]["stale_epoch"] + cache.stats()["l2"]["stale_epoch"] == 1

    def test_kill_l1__memory_is_cleared(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """A killed memory layer comes back empty."""
        cache = make_cache()
        read(cache, "key-a")
        layer_flags.set_state(L1, killed(layer_flags, L1))
        assert len(cache.layers[0]) == 0


class TestShadowAndVerification:
    def test_shadow__wrong_entry__answer_from_below_and_mismatch_counted(
        self,
        read: Reader,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
    ) -> None:
        """A shadow layer never answers; its disagreements are counted."""
        layer_flags.set(f"{L2}.shadow", True)
        cache = make_cache()
        broken_write(cache, "key-a")
        assert read(cache, "key-a") == KEY_A
        assert cache.stats()["l2"]["mismatch_shadow"] == (1 if on(layer_flags, L2) else 0)
        assert cache.modes()["l2"] is (Mode.SHADOW if on(layer_flags, L2) else Mode.OFF)

    def test_shadow__agreeing_entry__counted_as_verified(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """Agreement is counted too, so the mismatch rate has a denominator."""
        layer_flags.set(f"{L2}.shadow", True)
        read(make_cache(), "key-a")
        second = make_cache()
        assert read(second, "key-a") == KEY_A
        stats = second.stats()["l2"]
        assert (stats["verify_shadow"], stats["mismatch_shadow"]) == (
            (1, 0) if on(layer_flags, L2) else (0, 0)
        )

    def test_shadow_l1__wrong_memory_entry__answer_from_below(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """The memory layer can run in shadow too: read and written, never answering."""
        layer_flags.set(f"{L1}.shadow", True)
        cache = make_cache()
        cache.layers[0].set("key-a", Entry(WRONG, time.time()))
        assert read(cache, "key-a") == KEY_A
        assert cache.stats()["l1"]["mismatch_shadow"] == (1 if on(layer_flags, L1) else 0)
        if on(layer_flags, L1):
            assert cache.modes()["l1"] is Mode.SHADOW
            assert read(cache, "key-a") == KEY_A  # refilled with the right value, still shadow
            assert cache.stats()["l1"]["verify_shadow"] == 2

    def test_verify__sampled_live_hit_disagrees__counted_and_deleted(
        self,
        read: Reader,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
        raw_redis: redis.Redis,
    ) -> None:
        """Verification off the request path catches a wrong live value and drops it."""
        cache = make_cache(verify_share=1.0)
        broken_write(cache, "key-a")
        first = read(cache, "key-a")
        assert cache.wait_idle()
        assert first == (WRONG if on(layer_flags, L2) else KEY_A)
        if on(layer_flags, L2):
            assert cache.stats()["l2"]["mismatch_verify"] == 1
            assert not in_redis(raw_redis, cache, "key-a")
            assert cache.layers[0].get("key-a") is None
        assert read(cache, "key-a") == KEY_A

    def test_verify__hot_key_burst__one_reread_per_entry_while_pending(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """Hits of one entry share the loader re-read already queued for it: a burst of
        reads of a hot key does not queue a verification per hit (with no layer on,
        every read is a load and nothing is verified)."""
        source = Source(default_data(), delay=0.2)
        cache = make_cache(loader=source, verify_share=1.0)
        assert read(cache, "key-a") == KEY_A  # a miss: loaded and written
        assert cache.wait_idle()
        before = source.count("key-a")
        for _ in range(20):
            assert read(cache, "key-a") == KEY_A
        assert cache.wait_idle()
        calls = source.count("key-a") - before
        if not (on(layer_flags, L1) or on(layer_flags, L2)):
            assert calls == 20
        else:
            assert 1 <= calls <= 5, calls  # one per 0.2 s re-read, not one per hit


class TestSingleFlight:
    def test_get__cold_key_under_load__loader_called_once(
        self, read: Reader, make_cache: CacheFactory
    ) -> None:
        """Sixteen threads (or tasks) missing one key share one lookup, in every combination."""
        source = Source(default_data(), delay=0.1)
        cache = make_cache(loader=source)
        if read.how == "aget":

            async def scenario() -> list[object]:
                return list(await asyncio.gather(*(cache.aget("key-a") for _ in range(16))))

            assert read.run(scenario()) == [KEY_A] * 16
            assert source.count("key-a") == 1
            return
        barrier = threading.Barrier(16)
        results: list[object] = []

        def reader() -> None:
            barrier.wait()
            results.append(cache.get("key-a"))

        threads = [threading.Thread(target=reader) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [KEY_A] * 16
        assert source.count("key-a") == 1

    def test_get__leader_fails__every_waiter_gets_the_error(
        self, read: Reader, make_cache: CacheFactory
    ) -> None:
        """A loader error reaches every caller of the flight, and the next call retries."""
        gate = threading.Event()
        fail = {"on": True}

        def loader(key: str) -> object:
            if not fail["on"]:
                return {"ok": key}
            gate.wait(2)
            raise LookupError("database down")

        cache = make_cache(loader=loader)
        errors: list[BaseException] = []
        if read.how == "aget":

            async def scenario() -> None:
                tasks = [asyncio.ensure_future(cache.aget("key-a")) for _ in range(4)]
                while len(cache._aflights.pending) != 1:
                    await asyncio.sleep(0.001)  # the loop's turn: no thread to wait on
                gate.set()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                errors.extend(r for r in results if isinstance(r, LookupError))

            read.run(scenario())
        else:

            def reader() -> None:
                try:
                    cache.get("key-a")
                except LookupError as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=reader) for _ in range(4)]
            for t in threads:
                t.start()
            assert wait_until(lambda: len(cache._flights.pending) == 1)
            gate.set()
            for t in threads:
                t.join()
        assert len(errors) == 4
        fail["on"] = False
        assert read(cache, "key-a") == {"ok": "key-a"}


class TestLoaders:
    @pytest.mark.parametrize("kind", ["sync", "async"])
    def test_get__either_loader__same_answers(
        self,
        read: Reader,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
        kind: str,
    ) -> None:
        """Both drivers take a sync or an async loader (a sync one off the event loop,
        an async one run to completion behind get)."""
        source = Source(default_data()) if kind == "sync" else AsyncSource(default_data())
        cache = make_cache(loader=source)
        assert [read(cache, "key-a"), read(cache, "key-a"), read(cache, "x")] == [
            KEY_A,
            KEY_A,
            None,
        ]
        cached = on(layer_flags, L1) or on(layer_flags, L2)
        assert source.count("key-a") == (1 if cached else 2)

    def test_get__async_loader__single_flight(self, read: Reader, make_cache: CacheFactory) -> None:
        """Ten concurrent reads of a cold key await one async lookup."""
        source = AsyncSource(default_data(), delay=0.05)
        cache = make_cache(loader=source)
        if read.how == "aget":

            async def scenario() -> list[object]:
                return list(await asyncio.gather(*(cache.aget("key-a") for _ in range(10))))

            assert read.run(scenario()) == [KEY_A] * 10
        else:
            barrier = threading.Barrier(10)
            results: list[object] = []

            def reader() -> None:
                barrier.wait()
                results.append(cache.get("key-a"))

            threads = [threading.Thread(target=reader) for _ in range(10)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert results == [KEY_A] * 10
        assert source.count("key-a") == 1

    def test_get__reads_what_the_other_driver_wrote(
        self, read: Reader, make_cache: CacheFactory, source: Source, layer_flags: TestFlagClient
    ) -> None:
        """Each driver reads the other's envelopes (redis-py and redis.asyncio)."""
        writer = make_cache()
        if read.how == "aget":
            writer.get("key-a")
        else:
            asyncio.run(_aget_once(writer, "key-a"))
        assert read(make_cache(), "key-a") == KEY_A
        assert source.count("key-a") == (1 if on(layer_flags, L2) else 2)

    def test_get__wrong_entry_in_shadow_async_loader__answer_from_below(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """Shadow comparison works the same with an async loader."""
        layer_flags.set(f"{L2}.shadow", True)
        cache = make_cache(loader=AsyncSource(default_data()))
        broken_write(cache, "key-a")
        assert read(cache, "key-a") == KEY_A
        assert cache.stats()["l2"]["mismatch_shadow"] == (1 if on(layer_flags, L2) else 0)


async def _aget_once(cache: LayeredCache, key: str) -> object:
    try:
        return await cache.aget(key)
    finally:
        for layer in cache.layers:
            aclose = getattr(layer, "aclose", None)
            if aclose is not None:
                await aclose()


class TestInvalidation:
    def test_invalidate__revoked_key__stops_working_everywhere_within_100ms(
        self, read: Reader, make_cache: CacheFactory, source: Source
    ) -> None:
        """Another process's memory layer drops the key via pub/sub, not after a TTL."""
        here, there = make_cache(), make_cache()
        assert read(here, "key-a") == read(there, "key-a") == KEY_A
        del source.data["key-a"]  # the API key is revoked in the database
        started = time.monotonic()
        assert here.invalidate("key-a")
        assert read(here, "key-a") is None
        assert wait_until(lambda: read(there, "key-a") is None, timeout=0.1)
        assert time.monotonic() - started < 0.1

    def test_invalidate__load_racing_the_revocation__is_not_cached(
        self, read: Reader, make_cache: CacheFactory, layer_flags: TestFlagClient
    ) -> None:
        """A value loaded before the revocation is returned once, but not stored."""
        gate, loading = threading.Event(), threading.Event()
        data = dict(default_data())

        def slow_loader(key: str) -> object:
            loading.set()
            gate.wait(2)
            return data.get(key)

        cache = make_cache(loader=slow_loader)
        reader = threading.Thread(target=read.in_thread(cache, "key-a"))
        reader.start()
        assert loading.wait(2)
        del data["key-a"]
        cache.invalidate("key-a")
        gate.set()
        reader.join()
        assert read(cache, "key-a") is None

    def test_invalidate__another_process_loaded_before__cannot_write_it_back(
        self,
        read: Reader,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
        raw_redis: redis.Redis,
    ) -> None:
        """A process that read the database before the revocation (and has not heard of
        it) finds its Redis write refused by the tombstone; nobody is served the old key."""
        gate, loading = threading.Event(), threading.Event()
        data = dict(default_data())

        def slow_loader(key: str) -> object:
            value = data.get(key)
            loading.set()
            gate.wait(2)
            return value

        revoker = make_cache()
        deaf = make_cache(loader=slow_loader, start=False)  # hears no pub/sub
        reader = threading.Thread(target=read.in_thread(deaf, "key-a"))
        reader.start()
        assert loading.wait(2)
        del data["key-a"]
        revoker.invalidate("key-a")
        gate.set()
        reader.join()
        assert not in_redis(raw_redis, revoker, "key-a")
        assert read(make_cache(loader=data.get), "key-a") is None

    def test_channel_down__memory_serves_nothing_older_than_the_bound(
        self, read: Reader, make_cache: CacheFactory, source: Source, layer_flags: TestFlagClient
    ) -> None:
        """Without the invalidation channel, memory entries live at most the bound."""
        cache = make_cache(start=False, channel_down_max_age=0.05)
        assert not cache.channel_up
        read(cache, "key-a")
        read(cache, "key-a")
        if not on(layer_flags, L1):
            return
        assert cache.stats()["l1"]["hits"] == 1
        misses = cache.stats()["l1"]["misses"]
        assert wait_until(lambda: (read(cache, "key-a"), cache.stats()["l1"]["misses"])[1] > misses)

    def test_invalidate__unreachable_redis__returns_false_and_never_raises(
        self, read: Reader, make_cache: CacheFactory, source: Source
    ) -> None:
        """An invalidation that cannot reach Redis says so; local memory is still dropped."""
        from flags.testing.redis_server import free_port

        cache = make_cache(url=f"redis://127.0.0.1:{free_port()}/0", start=False)
        read(cache, "key-a")
        assert cache.invalidate("key-a") is False
        assert cache.layers[0].get("key-a") is None
        assert cache.stats()["cache"]["invalidations_failed"] == 1


class TestObservability:
    def test_metrics__exposed_on_the_default_registry(
        self, read: Reader, make_cache: CacheFactory
    ) -> None:
        """hits, misses, corrupt reads... are Prometheus families labelled by cache and layer."""
        cache = make_cache()
        read(cache, "key-a")
        read(cache, "key-a")
        text = generate_latest(REGISTRY).decode()
        for family in (
            "flagrail_cache_hits_total",
            "flagrail_cache_misses_total",
            "flagrail_cache_errors_total",
            "flagrail_cache_corrupt_reads_total",
            "flagrail_cache_mismatches_total",
            "flagrail_cache_bypasses_total",
            "flagrail_cache_latency_seconds_bucket",
            "flagrail_cache_loads_total",
        ):
            assert f'{family}{{cache="{CACHE}"' in text, family
        assert REGISTRY.get_sample_value("flagrail_cache_loads_total", {"cache": CACHE}) >= 1

    def test_construction__declares_layer_and_shadow_flags(self, make_cache: CacheFactory) -> None:
        """The cache declares the flags it evaluates, for coverage and clean-up reports."""
        make_cache(start=False)
        declared = declared_flags()
        for key in (L1, L2, f"{L1}.shadow", f"{L2}.shadow"):
            assert key in declared and declared[key].kind == "operational"
