"""Cache fixtures: a source of truth that counts its calls, cache factories, waiting.

Layer flags come from the flagrail pytest plugin: ``@pytest.mark.flag_matrix(L1, L2)``
runs a test once per on/off combination and sets it on ``flag_client``;
``layer_flags`` is that client under the name the cache tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from flags.cache import LayeredCache, MemoryLayer, RedisLayer
from flags.cache.breaker import CircuitBreaker
from flags.testing.client import TestFlagClient

from .support import CACHE, SECRET, Source, default_data


@pytest.fixture
def layer_flags(flag_client: TestFlagClient) -> TestFlagClient:
    """The flag client of this test: under ``flag_matrix`` it holds the run's layer flags."""
    return flag_client


@pytest.fixture
def source() -> Source:
    return Source(default_data())


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


CacheFactory = Callable[..., LayeredCache]


@pytest.fixture
def make_cache(
    layer_flags: TestFlagClient, source: Source, key_prefix: str, redis_url: str
) -> Iterator[CacheFactory]:
    """Build ``auth.cache`` caches (memory + Redis) that are closed after the test.

    Keyword arguments go to ``LayeredCache``, except ``url``, ``redis_ttl``,
    ``memory_ttl``, ``breaker``, ``socket_timeout``, ``loader``, ``flags`` and
    ``start`` (default True: listener and worker running, channel heard).
    """
    made: list[LayeredCache] = []

    def factory(**kwargs: Any) -> LayeredCache:
        url = kwargs.pop("url", redis_url)
        breaker = kwargs.pop("breaker", None) or CircuitBreaker(3, 0.2)
        layer_kwargs: dict[str, Any] = {
            "secret": SECRET,
            "prefix": key_prefix,
            "ttl": kwargs.pop("redis_ttl", 300.0),
            "breaker": breaker,
        }
        if "socket_timeout" in kwargs:
            layer_kwargs["socket_timeout"] = kwargs.pop("socket_timeout")
        layers = [
            MemoryLayer(ttl=kwargs.pop("memory_ttl", 60.0)),
            RedisLayer(url, **layer_kwargs),
        ]
        start = kwargs.pop("start", True)
        cache = LayeredCache(
            CACHE,
            layers,
            kwargs.pop("loader", source),
            kwargs.pop("flags", layer_flags),
            **{"verify_share": 0.0, **kwargs},
        )
        made.append(cache)
        if start:
            cache.start(wait=5.0)
        return cache

    yield factory
    for cache in made:
        cache.close()
