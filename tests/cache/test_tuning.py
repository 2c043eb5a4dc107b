"""flags.cache.tuning: layer ttls and the verification share bound to number flags."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import redis

from flags.cache.codec import Entry
from flags.cache.memory import MemoryLayer
from flags.cache.tuning import (
    L1_TTL_FLAG,
    L2_TTL_FLAG,
    VERIFY_SHARE_FLAG,
    Bounds,
    NumberBinding,
    bind_cache_tuning,
)
from flags.errors import ValidationError
from flags.testing.client import TestFlagClient

from .conftest import CacheFactory

TTLS = {"short": 30, "long": 600, "huge": 10**9}


def test_bind__flags_missing__configured_values_stay(
    make_cache: CacheFactory, layer_flags: TestFlagClient
) -> None:
    """Without the flags every setting keeps the value the code configured."""
    cache = make_cache(memory_ttl=45.0, redis_ttl=120.0, verify_share=0.25)
    bindings = bind_cache_tuning(layer_flags, cache, l1=cache.layers[0], l2=cache.layers[1])
    assert (cache.layers[0].ttl, cache.layers[1].ttl, cache.verify_share) == (45.0, 120.0, 0.25)
    for binding in bindings:
        binding.close()


def test_bind__flag_changes__applied_without_a_restart(
    make_cache: CacheFactory, layer_flags: TestFlagClient, raw_redis: redis.Redis
) -> None:
    """A change of the number flags reaches the layers and the cache at the next snapshot."""
    cache = make_cache(memory_ttl=45.0, redis_ttl=120.0)
    bindings = bind_cache_tuning(layer_flags, cache, l1=cache.layers[0], l2=cache.layers[1])
    layer_flags.set(L1_TTL_FLAG, "short", variants=TTLS, off_variant="short")
    layer_flags.set(L2_TTL_FLAG, 20)
    layer_flags.set(VERIFY_SHARE_FLAG, 0.5)
    assert (cache.layers[0].ttl, cache.layers[1].ttl, cache.verify_share) == (30.0, 20.0, 0.5)
    # The Redis layer writes with the new expiry.
    l2 = cache.layers[1]
    l2.set("key-t", Entry({"scopes": ["read"]}, time.time()))
    assert 0 < raw_redis.pttl(l2.storage_key("key-t")) <= 20_000  # type: ignore[attr-defined]
    for binding in bindings:
        binding.close()
    layer_flags.set(VERIFY_SHARE_FLAG, 0.75)
    assert cache.verify_share == 0.5  # closed: no longer follows


def test_bind__value_out_of_bounds__clamped() -> None:
    client = TestFlagClient()
    layer = MemoryLayer(ttl=60.0)
    binding = NumberBinding(
        client, L1_TTL_FLAG, layer.set_ttl, default=layer.ttl, bounds=Bounds(1.0, 3600.0)
    )
    client.set(L1_TTL_FLAG, "huge", variants=TTLS, off_variant="short")
    assert layer.ttl == 3600.0
    client.set(L1_TTL_FLAG, 0)
    assert layer.ttl == 1.0
    binding.close()


def test_bind__killed_flag__serves_its_safe_value() -> None:
    """A killed tuning flag serves its off_variant, the operator's safe value."""
    client = TestFlagClient()
    layer = MemoryLayer(ttl=60.0)
    binding = NumberBinding(
        client, L1_TTL_FLAG, layer.set_ttl, default=layer.ttl, bounds=Bounds(1.0, 3600.0)
    )
    state = client.set(L1_TTL_FLAG, "long", variants=TTLS, off_variant="short")
    assert layer.ttl == 600.0
    client.set_state(L1_TTL_FLAG, replace(state, killed=True, version=state.version + 1))
    assert layer.ttl == 30.0
    binding.close()


def test_bind__flag_of_another_type__default() -> None:
    client = TestFlagClient({L1_TTL_FLAG: True})
    layer = MemoryLayer(ttl=60.0)
    binding = NumberBinding(
        client, L1_TTL_FLAG, layer.set_ttl, default=45.0, bounds=Bounds(1.0, 3600.0)
    )
    assert layer.ttl == 45.0
    binding.close()


def test_bounds__inverted__refused() -> None:
    with pytest.raises(ValidationError):
        Bounds(10.0, 1.0)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "30"])
def test_set_ttl__bad_value__refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        MemoryLayer().set_ttl(bad)  # type: ignore[arg-type]
