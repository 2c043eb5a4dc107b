"""Cache fixtures: a source of truth that counts its calls, cache factories, waiting.

Layer flags come from the flagrail pytest plugin: ``@pytest.mark.flag_matrix(L1, L2)``
runs a test once per on/off combination and sets it on ``flag_client``;
``layer_flags`` is that client under the name the cache tests use. ``read`` runs a
test once through ``LayeredCache.get`` and once through ``aget``.
"""

from __future__ import annotations

import asyncio
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
PATIENT = 0.5  # seconds: Redis timeouts of tests that do not drill timeouts


@pytest.fixture
def make_cache(
    layer_flags: TestFlagClient, source: Source, key_prefix: str, redis_url: str
) -> Iterator[CacheFactory]:
    """Build ``auth.cache`` caches (memory + Redis) that are closed after the test.

    Keyword arguments go to ``LayeredCache``, except ``url``, ``redis_ttl``,
    ``memory_ttl``, ``breaker``, ``socket_timeout``, ``loader``, ``flags`` and
    ``start`` (default True: listener and worker running, channel heard). Without
    ``socket_timeout`` the layer's timeouts are ``PATIENT`` (fault drills give theirs).
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
        else:  # not a timeout test: patient enough for a loaded CI box
            layer_kwargs["socket_timeout"] = layer_kwargs["connect_timeout"] = PATIENT
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


async def _aclose(cache: LayeredCache) -> None:
    """Close what ``cache``'s remote layers opened on the running loop."""
    for layer in cache.layers:
        aclose = getattr(layer, "aclose", None)
        if aclose is not None:
            await aclose()


class Reader:
    """Reads through a cache with ``get`` or with ``aget`` (on one event loop kept for
    the test, whose async clients are closed at the end)."""

    def __init__(self, how: str) -> None:
        self.how = how
        self._runner = asyncio.Runner() if how == "aget" else None
        self._caches: list[LayeredCache] = []

    def __call__(self, cache: LayeredCache, key: str, tenant: str | None = None) -> Any:
        if self._runner is None:
            return cache.get(key, tenant)
        if cache not in self._caches:
            self._caches.append(cache)
        return self._runner.run(cache.aget(key, tenant))

    def run(self, coroutine: Any) -> Any:
        """Run ``coroutine`` on the test's event loop (``aget`` only)."""
        assert self._runner is not None, "run() is for the aget reader"
        return self._runner.run(coroutine)

    def in_thread(self, cache: LayeredCache, key: str) -> Callable[[], Any]:
        """A thread target reading ``key`` (``aget`` on a loop of that thread's own)."""
        if self._runner is None:
            return lambda: cache.get(key)

        async def once() -> Any:
            try:
                return await cache.aget(key)
            finally:
                await _aclose(cache)

        return lambda: asyncio.run(once())

    def close(self) -> None:
        if self._runner is not None:
            for cache in self._caches:
                self._runner.run(_aclose(cache))
            self._runner.close()


@pytest.fixture(params=["get", "aget"])
def read(request: pytest.FixtureRequest) -> Iterator[Reader]:
    """The read path under test: ``get`` or ``aget``."""
    reader = Reader(request.param)
    yield reader
    reader.close()
