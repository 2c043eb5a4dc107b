"""A broken write path is caught wherever it breaks, in one process, for ``get`` and ``aget``.

Each injection point sits where production would have it (a serializer passed as
``serializer=``, a codec, a layer subclass, a loader wrapper, a second writer with
the secret) and the check is the cache's own: live reads are verified against the
loader's value (never through the layer's serializer), shadow reads against the
answer from below, and every write is read back before it is sent. The big matrix
(guard kills, rates, four processes) is ``test_fault_matrix.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from flags.cache import (
    Codec,
    Entry,
    Guard,
    JsonSerializer,
    LayeredCache,
    MemoryLayer,
    RedisLayer,
)
from flags.cache.canonical import same
from flags.cache.codec import SCHEMA_VERSION, Rejection
from flags.errors import CorruptEntryError
from flags.testing import wait_for
from flags.testing.client import TestFlagClient

from .conftest import PATIENT
from .support import CACHE, L1, L2, SECRET, Source, default_data

pytestmark = pytest.mark.redis

TRUTH = default_data()["key-a"]


def emptied(value: Any) -> Any:
    """The seed incident's damage: a record with its scopes emptied (still well formed)."""
    if isinstance(value, dict) and value.get("scopes"):
        return {**value, "scopes": []}
    return value


class DumpsEmptiesScopes(JsonSerializer):
    """A serializer whose ``dumps`` writes records with no scopes (the seed incident)."""

    def dumps(self, value: Any) -> bytes:
        return super().dumps(emptied(value))


class LoadsEmptiesScopes(JsonSerializer):
    """A serializer whose ``loads`` drops the scopes it reads."""

    def __init__(self) -> None:
        super().__init__()
        decode = self.loads
        self.loads = lambda data: emptied(decode(data))


class TupleSerializer(JsonSerializer):
    """A healthy serializer that changes shape: sequences come back as tuples."""

    def __init__(self) -> None:
        super().__init__()
        decode = self.loads
        self.loads = lambda data: _tuples(decode(data))


def _tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


class EncodeEmptiesScopes(Codec):
    """A codec that encodes records with no scopes (checksummed around the wrong payload)."""

    def encode(self, key: bytes, value: Any, **kwargs: Any) -> bytes:
        return super().encode(key, emptied(value), **kwargs)


class SetEmptiesScopes(RedisLayer):
    """A layer whose ``set`` stores records with no scopes (outside any codec check)."""

    def set(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        return super().set(key, Entry(emptied(entry.value), entry.written_at), ttl)

    async def aset(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        return await super().aset(key, Entry(emptied(entry.value), entry.written_at), ttl)


class ColdLoadWrapper:
    """A wrapper around the loader (an app's memo) that answers a key's first lookup,
    the one that fills the cache, with no scopes, and later ones right."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.seen: set[str] = set()

    def __call__(self, key: str) -> Any:
        value = self.source(key)
        if key in self.seen:
            return value
        self.seen.add(key)
        return emptied(value)


Read = Callable[[LayeredCache, str], Any]


@pytest.fixture(params=["get", "aget"])
def read(request: pytest.FixtureRequest) -> Iterator[Read]:
    """``cache.get`` or ``cache.aget`` on one event loop kept for the test."""
    if request.param == "get":
        yield lambda cache, key: cache.get(key)
        return
    runner = asyncio.Runner()
    yield lambda cache, key: runner.run(cache.aget(key))
    runner.close()


@pytest.fixture
def flags(flag_client: TestFlagClient) -> TestFlagClient:
    """L2 live (or shadow, per test), L1 off: every read reaches the Redis layer."""
    flag_client.set(L1, False)
    flag_client.set(L2, True)
    return flag_client


Build = Callable[..., LayeredCache]


@pytest.fixture
def build(flags: TestFlagClient, redis_url: str, key_prefix: str) -> Iterator[Build]:
    made: list[LayeredCache] = []

    def factory(
        layer: type[RedisLayer] = RedisLayer,
        loader: Callable[[str], Any] | None = None,
        **layer_kwargs: Any,
    ) -> LayeredCache:
        cache = LayeredCache(
            CACHE,
            [
                MemoryLayer(),
                layer(
                    redis_url,
                    secret=SECRET,
                    prefix=key_prefix,
                    socket_timeout=PATIENT,
                    connect_timeout=PATIENT,
                    **layer_kwargs,
                ),
            ],
            loader if loader is not None else Source(default_data()),
            flags,
            verify_share=1.0,
        ).start(wait=5.0)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.close()


def stats(cache: LayeredCache) -> dict[str, Any]:
    assert cache.wait_idle()
    return cache.stats()["l2"]


def stored(cache: LayeredCache, key: str) -> Entry | None:
    """What the Redis layer holds for ``key``, read by a healthy layer with the secret."""
    layer = cache.layers[1]
    healthy = RedisLayer(
        layer.url,  # type: ignore[attr-defined]
        secret=SECRET,
        prefix=layer.prefix,  # type: ignore[attr-defined]
        socket_timeout=PATIENT,
        connect_timeout=PATIENT,
    )
    healthy.bind(CACHE)
    try:
        return healthy.get(key)
    except CorruptEntryError:
        return None
    finally:
        healthy.close()


class TestSerializer:
    @pytest.mark.parametrize("serializer", [DumpsEmptiesScopes, LoadsEmptiesScopes])
    def test_serializer_broken__live__write_refused_and_counted_no_wrong_answer(
        self, build: Build, read: Read, serializer: type[JsonSerializer]
    ) -> None:
        """The seed incident: the write is read back before it is sent, so nothing wrong
        is stored, the mismatch is counted and every answer is the loader's."""
        cache = build(serializer=serializer())
        assert [read(cache, "key-a") for _ in range(3)] == [TRUTH] * 3
        st = stats(cache)
        assert st["mismatch_write"] == st["verify_write"] == 3
        assert st["writes"] == 0
        assert stored(cache, "key-a") is None

    def test_serializer_broken__shadow__mismatch_counted_answer_from_below(
        self, build: Build, read: Read, flags: TestFlagClient
    ) -> None:
        """A shadow layer with the seed's serializer is caught too (the shadow step)."""
        flags.set(f"{L2}.shadow", True)
        cache = build(serializer=DumpsEmptiesScopes())
        assert [read(cache, "key-a") for _ in range(2)] == [TRUTH] * 2
        assert stats(cache)["mismatch_write"] == 2

    def test_loads_broken__entry_from_a_healthy_writer__verification_catches_and_drops(
        self, build: Build, read: Read
    ) -> None:
        """A reader whose ``loads`` is broken serves one wrong value at most: verification
        compares it with the loader's value itself, never through the serializer."""
        build().get("key-a")  # a healthy process wrote the right entry
        reader = build(serializer=LoadsEmptiesScopes())
        read(reader, "key-a")
        st = stats(reader)
        assert st["mismatch_verify"] == 1
        assert stored(reader, "key-a") is None
        assert read(reader, "key-a") == TRUTH

    def test_shape_changing_serializer__no_false_mismatch(self, build: Build, read: Read) -> None:
        """Lists read back as tuples are the same value: no mismatch anywhere."""
        cache = build(serializer=TupleSerializer())
        for _ in range(3):
            assert same(read(cache, "key-a"), TRUTH)
        st = stats(cache)
        assert st["hits"] >= 1 and st["verify_verify"] >= 1
        assert st["mismatch_verify"] == st["mismatch_write"] == 0


class TestCodecAndLayer:
    def test_codec_encodes_wrong_value__write_refused(self, build: Build, read: Read) -> None:
        """A codec that checksums the wrong payload is caught on the write."""
        cache = build()
        layer = cache.layers[1]
        layer.codec = EncodeEmptiesScopes(SECRET)  # type: ignore[attr-defined]
        assert [read(cache, "key-a") for _ in range(2)] == [TRUTH] * 2
        assert stats(cache)["mismatch_write"] == 2
        assert stored(cache, "key-a") is None

    def test_layer_set_stores_wrong_value__verification_catches_and_drops(
        self, build: Build, read: Read
    ) -> None:
        """A broken ``set`` is beyond the write check; the verified read catches it."""
        cache = build(layer=SetEmptiesScopes)
        assert read(cache, "key-a") == TRUTH  # from the loader; the wrong value is stored
        read(cache, "key-a")  # served by l2, verified against the loader
        st = stats(cache)
        assert st["mismatch_verify"] == 1
        assert stored(cache, "key-a") is None

    def test_layer_set_stores_wrong_value__shadow_counts_and_never_serves(
        self, build: Build, read: Read, flags: TestFlagClient
    ) -> None:
        flags.set(f"{L2}.shadow", True)
        cache = build(layer=SetEmptiesScopes)
        assert [read(cache, "key-a") for _ in range(3)] == [TRUTH] * 3
        assert stats(cache)["mismatch_shadow"] == 2


class TestLoaderWrapper:
    def test_fill_through_a_wrong_wrapper__verification_catches_the_stored_value(
        self, build: Build, read: Read
    ) -> None:
        """The value that filled the layers came through a wrong wrapper; the next
        lookup of the truth disagrees with what l2 serves, and the entry goes."""
        source = Source(default_data())
        cache = build(loader=ColdLoadWrapper(source))
        read(cache, "key-a")  # the cold load: stored with no scopes
        read(cache, "key-a")  # served by l2, verified: the loader now answers right
        assert stats(cache)["mismatch_verify"] == 1
        assert stored(cache, "key-a") is None
        assert read(cache, "key-a") == TRUTH


class TestForeignWriter:
    def test_other_process_with_the_secret_writes_wrong_value__caught_and_dropped(
        self, build: Build, read: Read
    ) -> None:
        cache = build()
        foreign = build(serializer=DumpsEmptiesScopes(), check_writes=False)
        foreign.get("key-a")  # that process stores the wrong record
        read(cache, "key-a")
        assert stats(cache)["mismatch_verify"] == 1
        assert stored(cache, "key-a") is None

    def test_other_process_wrong_value__shadow_counts(
        self, build: Build, read: Read, flags: TestFlagClient
    ) -> None:
        flags.set(f"{L2}.shadow", True)
        cache = build()
        build(serializer=DumpsEmptiesScopes(), check_writes=False).get("key-a")
        assert read(cache, "key-a") == TRUTH
        assert stats(cache)["mismatch_shadow"] == 1

    def test_entry_copied_to_another_key__corrupt_and_dropped(
        self, build: Build, read: Read, redis_url: str
    ) -> None:
        """The checksum covers the key: a copy under another key never verifies."""
        cache = build()
        cache.get("key-a")
        layer = cache.layers[1]
        raw = redis.Redis.from_url(redis_url)
        try:
            src, dst = layer.storage_key("key-a"), layer.storage_key("key-b")  # type: ignore[attr-defined]
            raw.set(dst, raw.get(src))
            assert read(cache, "key-b") == default_data()["key-b"]
            assert stats(cache)["corrupt_checksum"] == 1
            again = stored(cache, "key-b")  # the copy was dropped; the right value refilled
            assert again is not None and again.value == default_data()["key-b"]
        finally:
            raw.close()

    def test_stale_entry_replayed_within_its_epoch__caught_and_dropped(
        self, build: Build, read: Read, redis_url: str
    ) -> None:
        """Old bytes written back (valid checksum, same epoch) disagree with the truth."""
        source = Source(default_data())
        cache = build(loader=source)
        cache.get("key-a")
        layer = cache.layers[1]
        raw = redis.Redis.from_url(redis_url)
        try:
            rkey = layer.storage_key("key-a")  # type: ignore[attr-defined]
            old = raw.get(rkey)
            source.data["key-a"] = {**TRUTH, "scopes": ["read"]}  # the record changed
            cache.invalidate("key-a")
            served: list[Any] = []

            def replay_caught() -> bool:
                # Replayed after the invalidation, within the epoch. The invalidation's own
                # second pass (250 ms later) and its echo on the channel may still land and
                # drop the replay before it is judged (a revocation is not a mismatch), so the
                # replay is repeated until one is judged.
                raw.set(rkey, old)
                served.append(read(cache, "key-a"))
                return bool(stats(cache)["mismatch_verify"] >= 1)

            wait_for(replay_caught, 10, "a replayed stale entry caught by verification")
            assert TRUTH in served  # the stale value was served (once per replay) and caught
            assert stats(cache)["mismatch_verify"] == 1
            assert stored(cache, "key-a") is None
            assert read(cache, "key-a") == source.data["key-a"]
        finally:
            raw.close()


class TestForgery:
    @pytest.mark.parametrize("schema", [0, SCHEMA_VERSION + 1])
    def test_forged_entry_claiming_another_schema__corruption_the_guard_sees(
        self, flags: TestFlagClient, redis_url: str, key_prefix: str, read: Read, schema: int
    ) -> None:
        """Without the secret, a forger rewrites a real entry's schema byte: the checksum
        is checked first, so it is counted as corruption, the guard breaches, and the
        entry is deleted (a "newer schema" would otherwise be kept and never counted)."""
        guard = Guard(
            "http://admin.invalid",
            "token",
            environment="test",
            transport=httpx.MockTransport(lambda request: httpx.Response(503)),
            attempts=1,
            min_samples=1,
            max_corrupt_rate=0.0,
        )
        layer = RedisLayer(
            redis_url,
            secret=SECRET,
            prefix=key_prefix,
            socket_timeout=PATIENT,
            connect_timeout=PATIENT,
        )
        cache = LayeredCache(
            CACHE, [MemoryLayer(), layer], Source(default_data()), flags, guard=guard
        )
        raw = redis.Redis.from_url(redis_url)
        try:
            cache.get("key-a")
            rkey = layer.storage_key("key-a")
            forged = bytearray(raw.get(rkey) or b"")
            forged[2] = schema
            raw.set(rkey, bytes(forged))
            assert read(cache, "key-a") == TRUTH
            assert cache.stats()["l2"]["corrupt_checksum"] == 1
            assert guard.wait_idle()
            assert guard.stats.breaches == {L2: 1}
            assert not raw.exists(rkey)
        finally:
            raw.close()
            cache.close()


def test_write_check__names_the_rejection() -> None:
    """The refusal is a ``CorruptEntryError`` whose field is ``Rejection.WRITE``."""
    assert Rejection.WRITE.value == "write"
    assert not Rejection.WRITE.corrupt
