"""Flag-gated layered caching: memory -> Redis -> loader, each layer behind its own flag.

::

    from flags.cache import LayeredCache, MemoryLayer, RedisLayer

    cache = LayeredCache(
        "auth.cache",                                   # flags auth.cache.l1, auth.cache.l2
        [MemoryLayer(), RedisLayer(redis_url, secret=secret)],
        loader=lookup_api_key,                          # the source of truth; None = no such key
        flags=flag_client,
        guard=Guard(admin_url, operator_token, environment="production"),
    ).start()
    key_info = cache.get(api_key, tenant=tenant_id)     # never raises for a cache failure
    cache.invalidate(api_key)                           # revoked: gone in every process

The seams are protocols: ``Layer`` (what a layer offers), ``RemoteLayer`` (a
layer in another process, with envelopes, an epoch and a breaker), ``Cache``
(what callers depend on) and ``FlagSource`` (what the cache needs of a
``FlagClient``). Module map: ``codec`` (envelope), ``canonical`` (values compared
without a serializer), ``memory``, ``redis`` and ``scripts`` (its Lua), ``direct``,
``breaker``, ``layered`` (the cache), ``core`` (its I/O-free read decisions),
``drivers`` (blocking and asyncio), ``flight`` (single-flight), ``worker``
(background jobs), ``guard``, ``invalidation``, ``metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from flags.cache.breaker import BreakerState, CircuitBreaker
from flags.cache.codec import SCHEMA_VERSION, Codec, Entry, JsonSerializer, Rejection, Serializer
from flags.cache.guard import Breach, Guard, KillResult, Rates
from flags.cache.invalidation import InvalidationListener
from flags.cache.layered import LayeredCache, Mode
from flags.cache.memory import MemoryEntry, MemoryLayer
from flags.cache.redis import RedisLayer
from flags.model import FlagState, Snapshot

__all__ = [
    "SCHEMA_VERSION",
    "Breach",
    "BreakerState",
    "Cache",
    "CircuitBreaker",
    "Codec",
    "Entry",
    "FlagSource",
    "Guard",
    "InvalidationListener",
    "JsonSerializer",
    "KillResult",
    "Layer",
    "LayeredCache",
    "MemoryEntry",
    "MemoryLayer",
    "Mode",
    "Rates",
    "RedisLayer",
    "Rejection",
    "RemoteLayer",
    "Serializer",
]


class Cache(Protocol):
    """What code that reads through a cache depends on."""

    def get(self, key: str, tenant: str | None = None) -> Any:
        """The value for ``key``, None for "no such key". Raises only what the
        source of truth raises."""
        ...

    async def aget(self, key: str, tenant: str | None = None) -> Any: ...

    def invalidate(self, key: str) -> bool:
        """Forget ``key`` everywhere; True when it reached everything. Never raises."""
        ...


class Layer(Protocol):
    """One tier of a ``LayeredCache``: get / set / delete of ``Entry`` values.

    ``get`` returns None on a miss. A local layer (``remote = False``) never raises.
    """

    name: str
    remote: bool

    def get(self, key: str) -> Entry | None: ...
    def set(self, key: str, entry: Entry, ttl: float | None = None) -> object: ...
    def delete(self, key: str) -> None: ...
    def clear(self) -> None: ...


class RemoteLayer(Layer, Protocol):
    """A layer in another process. ``get``/``set``/``delete`` raise
    ``flags.errors.CacheError`` when the remote fails; ``get`` raises
    ``CorruptEntryError`` for an entry it will not serve, and ``set`` for a write
    it refused (``Rejection.WRITE``: the envelope did not read back as the value)
    or broken bookkeeping it repaired (``Rejection.BOOKKEEPING``); ``aget``,
    ``aset`` and ``adelete``, when present, are the asyncio twins ``aget`` uses
    (without them it runs the sync ones in a thread). ``available()`` is
    False while its circuit is open. ``bump(marker)`` grows its epoch once per
    marker before the next call (no I/O). ``invalidate(key, hold)`` deletes and
    refuses writes of ``key`` for ``hold`` seconds; ``set`` returns False when
    such a tombstone refused it."""

    url: str
    prefix: str
    codec: Codec

    def available(self) -> bool: ...
    def bind(self, cache: str, *, max_age: float | None = None) -> None: ...
    def bump(self, marker: str) -> None: ...
    def publish(self, channel: str, message: bytes) -> int: ...
    def invalidate(self, key: str, hold: float = 2.0) -> None: ...


class FlagSource(Protocol):
    """What a cache needs of a ``flags.client.FlagClient``."""

    environment: str

    def is_enabled(self, key: str, tenant: str | None = None, default: bool = False) -> bool: ...
    def state(self, key: str) -> FlagState | None: ...
    def on_change(self, callback: Callable[[Any, Snapshot], None]) -> Callable[[], None]: ...

    @property
    def snapshot(self) -> Snapshot | None: ...
