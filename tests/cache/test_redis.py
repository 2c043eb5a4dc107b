"""The Redis layer against a real Redis: envelopes, rejections, epochs, async twin."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from flags.cache.codec import SCHEMA_VERSION, Entry, Rejection
from flags.cache.redis import RedisLayer
from flags.errors import CacheError, CorruptEntryError, ValidationError

from .support import CACHE, SECRET

pytestmark = pytest.mark.redis

LayerFactory = Callable[..., RedisLayer]


@pytest.fixture
def make_layer(redis_url: str, key_prefix: str) -> Iterator[LayerFactory]:
    made: list[RedisLayer] = []

    def factory(**kwargs: object) -> RedisLayer:
        layer = RedisLayer(redis_url, secret=SECRET, prefix=key_prefix, **kwargs)  # type: ignore[arg-type]
        layer.bind(CACHE, max_age=300.0)
        made.append(layer)
        return layer

    yield factory
    for layer in made:
        layer.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def fresh(value: object = None) -> Entry:
    return Entry({"tenant": "acme"} if value is None else value, time.time())


def test_redis__write__is_read_back_by_a_fresh_instance(make_layer: LayerFactory) -> None:
    """What one process writes, another reads: an L2 CI never turns on is untested."""
    make_layer().set("key-a", fresh())
    got = make_layer().get("key-a")
    assert got is not None and got.value == {"tenant": "acme"} and got.source == "l2"


def test_redis__missing_key__is_none(make_layer: LayerFactory) -> None:
    """A miss is None, not an error."""
    assert make_layer().get("nope") is None


def test_redis__ttl__is_the_smaller_of_layer_and_entry(
    make_layer: LayerFactory, raw: redis.Redis
) -> None:
    """The Redis expiry is min(entry ttl, layer ttl)."""
    layer = make_layer(ttl=100.0)
    layer.set("k", fresh(), ttl=5.0)
    assert 0 < raw.pttl(layer.storage_key("k")) <= 5000
    layer.set("k2", fresh(), ttl=1000.0)
    assert 5000 < raw.pttl(layer.storage_key("k2")) <= 100_000


def test_redis__garbage_bytes__rejected_and_deleted(
    make_layer: LayerFactory, raw: redis.Redis
) -> None:
    """Bytes that are no envelope fail the checksum (checked first) and are removed."""
    layer = make_layer()
    raw.set(layer.storage_key("key-a"), b"\x00\xffnot an envelope at all, a broken writer")
    with pytest.raises(CorruptEntryError) as info:
        layer.get("key-a")
    assert info.value.field == Rejection.CHECKSUM
    assert raw.exists(layer.storage_key("key-a")) == 0


def test_redis__entry_copied_to_another_key__fails_checksum(
    make_layer: LayerFactory, raw: redis.Redis
) -> None:
    """An entry copied under another key does not verify, and is removed."""
    layer = make_layer()
    layer.set("key-a", fresh())
    raw.set(layer.storage_key("key-b"), raw.get(layer.storage_key("key-a")))
    with pytest.raises(CorruptEntryError) as info:
        layer.get("key-b")
    assert info.value.field == Rejection.CHECKSUM
    assert raw.exists(layer.storage_key("key-b")) == 0
    assert layer.get("key-a") is not None


def test_redis__old_schema__rejected_and_deleted(
    make_layer: LayerFactory, raw: redis.Redis
) -> None:
    """An envelope of an older schema is stale: removed, not served."""
    layer = make_layer()
    rkey = layer.storage_key("key-a")
    raw.set(rkey, layer.codec.encode(rkey, "v", epoch=0, written_at=time.time(), schema=0))
    with pytest.raises(CorruptEntryError) as info:
        layer.get("key-a")
    assert info.value.field == Rejection.SCHEMA
    assert raw.exists(rkey) == 0


def test_redis__newer_schema__rejected_but_kept(make_layer: LayerFactory, raw: redis.Redis) -> None:
    """A newer release's entries are not read, but not deleted either (rolling deploy)."""
    layer = make_layer()
    rkey = layer.storage_key("key-a")
    raw.set(
        rkey,
        layer.codec.encode(rkey, "v", epoch=0, written_at=time.time(), schema=SCHEMA_VERSION + 1),
    )
    with pytest.raises(CorruptEntryError):
        layer.get("key-a")
    assert raw.exists(rkey) == 1


def test_redis__old_epoch__rejected_and_deleted(make_layer: LayerFactory, raw: redis.Redis) -> None:
    """An entry written before the last bump is never served."""
    layer = make_layer()
    layer.set("key-a", fresh())
    layer.bump("test:v1")
    with pytest.raises(CorruptEntryError) as info:
        layer.get("key-a")
    assert info.value.field == Rejection.EPOCH
    assert raw.exists(layer.storage_key("key-a")) == 0


def test_redis__newer_epoch__is_adopted(make_layer: LayerFactory) -> None:
    """A reader behind the writer's epoch catches up and serves the entry."""
    writer, reader = make_layer(), make_layer()
    assert reader.get("warm-up") is None
    writer.bump("test:v5")
    writer.set("key-a", fresh())
    assert reader.get("key-a") is not None
    assert reader.epoch == writer.epoch


def test_redis__bump__is_once_per_marker_across_processes(make_layer: LayerFactory) -> None:
    """Many processes seeing the same flag change bump the epoch once."""
    a, b, c = make_layer(), make_layer(), make_layer()
    for layer in (a, b, c):
        layer.bump("production:v9")
        layer.get("any")
    assert a.epoch == b.epoch == c.epoch
    first = a.epoch
    assert first is not None
    a.bump("production:v10")
    a.get("any")
    assert a.epoch == first + 1


def test_redis__epoch_key_flushed__never_goes_backwards(
    make_layer: LayerFactory, raw: redis.Redis
) -> None:
    """After the epoch hash vanished, the epoch starts afresh above the caller's own, and
    the loss is reported as broken bookkeeping (healed by that very call)."""
    layer = make_layer()
    for n in range(3):
        layer.bump(f"test:v{n}")
    layer.get("any")
    before = layer.epoch
    assert before is not None
    raw.delete(layer.epoch_key)
    layer.bump("test:v99")
    with pytest.raises(CorruptEntryError) as info:
        layer.get("any")
    assert info.value.field == Rejection.BOOKKEEPING
    assert layer.epoch is not None and layer.epoch > before
    assert layer.get("any") is None


def test_redis__invalidated_key__refuses_writes_for_the_hold(
    make_layer: LayerFactory, raw: redis.Redis
) -> None:
    """After invalidate(key, hold), a write of a value loaded earlier is refused."""
    layer = make_layer()
    layer.set("key-a", fresh())
    layer.invalidate("key-a", hold=0.2)
    assert raw.exists(layer.storage_key("key-a")) == 0
    assert layer.set("key-a", fresh()) is False
    assert layer.get("key-a") is None
    deadline = time.monotonic() + 2.0
    while not layer.set("key-a", fresh()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert layer.get("key-a") is not None


def test_redis__older_than_max_age__rejected(make_layer: LayerFactory, raw: redis.Redis) -> None:
    """A positive entry that left the loader too long ago is stale, wherever it sits."""
    layer = make_layer()
    layer.max_age = 10.0
    layer.set("key-a", Entry("v", time.time() - 11.0))
    with pytest.raises(CorruptEntryError) as info:
        layer.get("key-a")
    assert info.value.field == Rejection.AGE


def test_redis__negative_entry__round_trips(make_layer: LayerFactory) -> None:
    """ "No such key" can be stored remotely when a cache opts in."""
    layer = make_layer()
    layer.set("gone", Entry(None, time.time(), negative=True))
    got = layer.get("gone")
    assert got is not None and got.negative and got.value is None


def test_redis__async_twin__round_trips(make_layer: LayerFactory) -> None:
    """aset/aget/adelete on redis.asyncio agree with the sync methods."""
    layer = make_layer()

    async def scenario() -> tuple[object, object, object]:
        await layer.aset("key-a", fresh())
        got = await layer.aget("key-a")
        await layer.adelete("key-a")
        gone = await layer.aget("key-a")
        await layer.aclose()
        return got.value if got else None, gone, layer.get("key-a")

    value, gone, sync_gone = asyncio.run(scenario())
    assert value == {"tenant": "acme"} and gone is None and sync_gone is None


def test_redis__async_old_epoch__rejected(make_layer: LayerFactory, raw: redis.Redis) -> None:
    """The async read applies pending bumps and rejects older entries too."""
    layer = make_layer()
    layer.set("key-a", fresh())
    layer.bump("test:v1")

    async def scenario() -> None:
        with pytest.raises(CorruptEntryError):
            await layer.aget("key-a")
        await layer.aclose()

    asyncio.run(scenario())
    assert raw.exists(layer.storage_key("key-a")) == 0


def test_redis__unreachable__raises_cache_error_and_counts_on_the_breaker(
    key_prefix: str,
) -> None:
    """A refused connection is a CacheError chained to the driver's error."""
    from flags.testing.redis_server import free_port

    layer = RedisLayer(f"redis://127.0.0.1:{free_port()}/0", secret=SECRET, prefix=key_prefix)
    layer.bind(CACHE)
    with pytest.raises(CacheError) as info:
        layer.get("k")
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    assert layer.breaker._failures == 1
    layer.close()


def test_redis__decoding_client__is_refused(redis_url: str) -> None:
    """A client that decodes responses would corrupt every envelope: refused up front."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValidationError):
        RedisLayer(redis_url, secret=SECRET, client=client)
    client.close()


def test_redis__bound_to_two_caches__raises(make_layer: LayerFactory) -> None:
    """A layer belongs to one cache: its keys and epoch are that cache's."""
    layer = make_layer()
    with pytest.raises(ValidationError):
        layer.bind("other.cache")
