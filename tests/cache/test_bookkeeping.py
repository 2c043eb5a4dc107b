"""The Redis layer's bookkeeping heals itself: garbage of any Redis type in any key of its
namespace (entries, the epoch hash, tombstones) is counted as corruption, repaired so that
nothing written before is served, and the layer serves again without a person."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from flags.cache import Guard, LayeredCache, MemoryLayer, RedisLayer
from flags.cache.codec import Entry, Rejection
from flags.errors import CacheError, CorruptEntryError
from flags.testing import wait_for
from flags.testing.client import TestFlagClient

from .conftest import PATIENT
from .support import CACHE, L1, L2, SECRET, Source, default_data

pytestmark = pytest.mark.redis

KEYS = ("key-a", "key-b")
DATA = default_data()


def plant(raw: redis.Redis, key: bytes, kind: str) -> None:
    """Replace ``key`` with garbage of Redis type ``kind`` (no expiry)."""
    raw.delete(key)
    if kind == "string":
        raw.set(key, b"\x00garbage\xff")
    elif kind == "list":
        raw.rpush(key, b"garbage")
    elif kind == "hash":
        raw.hset(key, mapping={b"garbage": b"1", b"n": b"not-a-number"})
    elif kind == "set":
        raw.sadd(key, b"garbage")
    elif kind == "zset":
        raw.zadd(key, {b"garbage": 1.0})
    elif kind == "stream":
        raw.xadd(key, {b"garbage": b"1"})
    else:  # pragma: no cover - a test bug
        raise AssertionError(kind)


KINDS = ["string", "list", "hash", "set", "zset", "stream"]

Read = Callable[[LayeredCache, str], Any]


@pytest.fixture(params=["get", "aget"])
def read(request: pytest.FixtureRequest) -> Iterator[Read]:
    if request.param == "get":
        yield lambda cache, key: cache.get(key)
        return
    runner = asyncio.Runner()
    yield lambda cache, key: runner.run(cache.aget(key))
    runner.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def build(
    flag_client: TestFlagClient, redis_url: str, key_prefix: str
) -> Iterator[Callable[..., LayeredCache]]:
    """``auth.cache`` with l1 off and l2 live, so every read reaches Redis."""
    flag_client.set(L1, False)
    flag_client.set(L2, True)
    made: list[LayeredCache] = []

    def factory(**kwargs: Any) -> LayeredCache:
        layer = RedisLayer(
            redis_url,
            secret=SECRET,
            prefix=key_prefix,
            socket_timeout=PATIENT,
            connect_timeout=PATIENT,
        )
        cache = LayeredCache(
            CACHE, [MemoryLayer(), layer], Source(DATA), flag_client, verify_share=0.0, **kwargs
        ).start(wait=5.0)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        cache.close()


def namespace(raw: redis.Redis, key_prefix: str) -> list[bytes]:
    return sorted(raw.scan_iter(match=f"{key_prefix}*".encode(), count=1000))


def corrupt(cache: LayeredCache) -> int:
    st = cache.stats()["l2"]
    return int(st["corrupt_bookkeeping"] + st["corrupt_format"])


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_in_every_key__no_wrong_answer_and_l2_serves_again_within_2s(
    build: Callable[..., LayeredCache],
    raw: redis.Redis,
    key_prefix: str,
    read: Read,
    kind: str,
) -> None:
    """Entries, epoch hash and tombstones all hold garbage of one type: every answer is
    the loader's, the corruption is counted, and a cache built afterwards is served by
    its L2 within 2 s (no breaker left open, nobody deletes a key by hand)."""
    old = build()
    for key in KEYS:
        read(old, key)
    old.invalidate("key-b")  # leaves a tombstone
    keys = namespace(raw, key_prefix)
    layer = old.layers[1]
    assert layer.epoch_key in keys  # type: ignore[attr-defined]
    assert any(b":t:" in k for k in keys) and any(b":v:" in k for k in keys)
    for key in keys:
        plant(raw, key, kind)

    answers = [read(old, key) for key in KEYS for _ in range(3)]
    fresh = build()

    def served_by_l2() -> bool:
        for key in KEYS:
            answers.append(read(fresh, key))
        return fresh.stats()["l2"]["hits"] >= len(KEYS)

    wait_for(served_by_l2, timeout=2.0, what="the new cache served from its L2")
    assert answers == [DATA[key] for key in KEYS for _ in range(3)] + [
        DATA[KEYS[n % 2]] for n in range(len(answers) - 6)
    ]
    assert corrupt(old) + corrupt(fresh) >= 1
    assert fresh.stats()["l2"]["errors"] == 0
    assert layer.breaker.allow()  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", KINDS)
def test_epoch_hash_garbage__started_afresh_strictly_newer_and_counted(
    build: Callable[..., LayeredCache], raw: redis.Redis, kind: str
) -> None:
    """Nothing written before the reset is served: the new epoch is above the old."""
    old = build()
    old.get("key-a")
    layer = old.layers[1]
    before = layer.epoch  # type: ignore[attr-defined]
    plant(raw, layer.epoch_key, kind)  # type: ignore[attr-defined]
    fresh = build()
    assert fresh.get("key-b") == DATA["key-b"]  # this call finds the garbage and heals it
    assert fresh.stats()["l2"]["corrupt_bookkeeping"] == 1
    after = fresh.layers[1].epoch  # type: ignore[attr-defined]
    assert after is not None and before is not None and after > before
    assert fresh.get("key-a") == DATA["key-a"]
    assert fresh.stats()["l2"]["stale_epoch"] == 1  # the entry from before: never served


def test_epoch_hash_without_its_number__counted_as_corruption(
    build: Callable[..., LayeredCache], raw: redis.Redis
) -> None:
    """A missing value (the hash lost ``n``) is corruption too, healed on the spot."""
    old = build()
    old.get("key-a")
    epoch_key = old.layers[1].epoch_key  # type: ignore[attr-defined]
    raw.hdel(epoch_key, "n")
    fresh = build()
    assert fresh.get("key-a") == DATA["key-a"]
    assert fresh.stats()["l2"]["corrupt_bookkeeping"] == 1


def test_tombstone_without_expiry__removed_write_goes_through_next_time(
    build: Callable[..., LayeredCache], raw: redis.Redis
) -> None:
    """A tombstone that would refuse writes forever is garbage: removed, counted."""
    cache = build()
    cache.get("key-a")
    layer = cache.layers[1]
    tomb = layer._keys("key-b")[1]  # type: ignore[attr-defined]
    raw.set(tomb, b"1")  # no expiry
    assert cache.get("key-b") == DATA["key-b"]
    assert cache.stats()["l2"]["corrupt_bookkeeping"] == 1
    assert not raw.exists(tomb)
    cache.get("key-b")
    assert raw.exists(layer.storage_key("key-b"))  # type: ignore[attr-defined]


def test_bookkeeping_corruption__is_guard_visible(
    build: Callable[..., LayeredCache], raw: redis.Redis
) -> None:
    """The guard counts healed bookkeeping as corrupt reads and breaches on them."""
    guard = Guard(
        "http://admin.invalid",
        "token",
        environment="test",
        transport=httpx.MockTransport(lambda request: httpx.Response(503)),
        attempts=1,
        min_samples=1,
        max_corrupt_rate=0.0,
    )
    old = build()
    old.get("key-a")
    plant(raw, old.layers[1].epoch_key, "list")  # type: ignore[attr-defined]
    fresh = build(guard=guard)
    assert fresh.get("key-a") == DATA["key-a"]
    assert guard.wait_idle()
    assert guard.stats.breaches == {L2: 1}


def test_layer__errors_name_the_operation(redis_url: str, key_prefix: str) -> None:
    """A failing script is reported as that script, not as a GET."""
    from flags.testing.redis_server import free_port

    layer = RedisLayer(f"redis://127.0.0.1:{free_port()}/0", secret=SECRET, prefix=key_prefix)
    layer.bind(CACHE)
    try:
        with pytest.raises(CacheError, match="epoch script failed"):
            layer.get("key-a")
    finally:
        layer.close()


def test_layer__wrong_type_entry__rejected_as_format_and_deleted(
    redis_url: str, key_prefix: str, raw: redis.Redis
) -> None:
    """An entry key holding a list is not a Redis failure: corrupt, deleted, breaker closed."""
    layer = RedisLayer(
        redis_url, secret=SECRET, prefix=key_prefix, socket_timeout=PATIENT, connect_timeout=PATIENT
    )
    layer.bind(CACHE)
    try:
        layer.set("key-a", Entry(DATA["key-a"], 1.0))
        plant(raw, layer.storage_key("key-a"), "list")
        with pytest.raises(CorruptEntryError) as info:
            layer.get("key-a")
        assert info.value.field == Rejection.FORMAT
        assert not raw.exists(layer.storage_key("key-a"))
        assert layer.breaker.clean
    finally:
        layer.close()
