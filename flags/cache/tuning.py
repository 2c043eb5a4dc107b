"""Cache tuning without a redeploy: cache settings bound to number flags.

``NumberBinding`` keeps one setting in step with a number flag of a
``FlagClient``: the flag's value (``client.value(key, default)``) is clamped to
the bounds the code declares and applied at once, then again after every
snapshot the client applies (on change), so a check costs nothing extra on the
cache's hot path. What the setting gets:

================================  ===========================================
the flag                          the setting
================================  ===========================================
on (any variant)                  the variant's value, clamped to the bounds
killed, disabled, off for it      its ``off_variant``: the declared safe value
missing, or not a number flag     ``default`` (the value the code configured)
================================  ===========================================

``bind_cache_tuning`` binds the usual three: a ``MemoryLayer`` ttl
(``auth.cache.l1.ttl``), a ``RedisLayer`` ttl (``auth.cache.l2.ttl``) and a
``LayeredCache`` verification share (``auth.cache.verify_share``).

    bindings = bind_cache_tuning(client, cache, l1=memory_layer, l2=redis_layer)
    ...
    for binding in bindings:
        binding.close()
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from flags.cache.layered import LayeredCache
from flags.cache.memory import MemoryLayer
from flags.cache.redis import RedisLayer
from flags.declarations import declare
from flags.errors import ValidationError
from flags.model import FlagKind, Snapshot

__all__ = ["Bounds", "NumberBinding", "NumberSource", "bind_cache_tuning"]

log = logging.getLogger("flagrail.cache")


class NumberSource(Protocol):
    """What a binding reads: a ``flags.FlagClient`` (the cache does not import it)."""

    def value(self, key: str, default: Any, tenant: str | None = None) -> Any: ...

    def on_change(self, callback: Callable[[Any, Snapshot], None]) -> Callable[[], None]: ...


L1_TTL_FLAG = "auth.cache.l1.ttl"
L2_TTL_FLAG = "auth.cache.l2.ttl"
VERIFY_SHARE_FLAG = "auth.cache.verify_share"


@dataclass(frozen=True, slots=True)
class Bounds:
    """The closed range ``low..high`` a tuned setting stays in (finite, ``low <= high``)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValidationError(
                f"bounds must be finite with low <= high, got {self.low!r}..{self.high!r}",
                field="bounds",
            )

    def clamp(self, value: float) -> float:
        return min(self.high, max(self.low, float(value)))


class NumberBinding:
    """Apply number flag ``key`` (clamped to ``bounds``) through ``apply``, now and on
    every change the client applies; ``default`` when the flag is missing or not a
    number flag. ``apply`` runs on the client's update thread; an ``apply`` that
    raises is logged and the previous value stays. Thread-safe; ``close()`` stops it.
    """

    def __init__(
        self,
        client: NumberSource,
        key: str,
        apply: Callable[[float], None],
        *,
        default: float,
        bounds: Bounds,
        tenant: str | None = None,
    ) -> None:
        self.client = client
        self.key = key
        self.bounds = bounds
        self.default = bounds.clamp(default)
        self.tenant = tenant
        self._apply = apply
        self._lock = threading.Lock()
        self.current: float | None = None
        declare(key, kind=FlagKind.OPERATIONAL, description="cache tuning (flags.cache.tuning)")
        self._unsubscribe: Callable[[], None] | None = client.on_change(self._changed)
        self.refresh()

    def read(self) -> float:
        """The flag's value now, clamped; ``default`` when missing or of another type."""
        value = self.client.value(self.key, self.default, self.tenant)
        if type(value) not in (int, float) or not math.isfinite(value):
            return self.default
        return self.bounds.clamp(value)

    def refresh(self) -> float:
        """Read the flag and apply the value if it changed; returns the value in force."""
        with self._lock:
            value = self.read()
            if value != self.current:
                try:
                    self._apply(value)
                except Exception:  # a setter refusing a value must not stop the sync thread
                    log.exception("cache tuning %s: applying %r failed", self.key, value)
                    return self.current if self.current is not None else value
                self.current = value
            return value

    def _changed(self, _client: NumberSource, _snapshot: Snapshot) -> None:
        self.refresh()

    def close(self) -> None:
        """Stop following the flag (the setting keeps its last value)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()


def bind_cache_tuning(
    client: NumberSource,
    cache: LayeredCache | None = None,
    *,
    l1: MemoryLayer | None = None,
    l2: RedisLayer | None = None,
    l1_ttl: Bounds = Bounds(1.0, 3600.0),
    l2_ttl: Bounds = Bounds(1.0, 86400.0),
    verify_share: Bounds = Bounds(0.0, 1.0),
) -> list[NumberBinding]:
    """Bind ``l1``'s ttl to ``auth.cache.l1.ttl``, ``l2``'s to ``auth.cache.l2.ttl`` and
    ``cache``'s verification share to ``auth.cache.verify_share`` (each one given),
    within the bounds; each setting's configured value is its default."""
    bindings = []
    if l1 is not None:
        bindings.append(
            NumberBinding(client, L1_TTL_FLAG, l1.set_ttl, default=l1.ttl, bounds=l1_ttl)
        )
    if l2 is not None:
        bindings.append(
            NumberBinding(client, L2_TTL_FLAG, l2.set_ttl, default=l2.ttl, bounds=l2_ttl)
        )
    if cache is not None:
        bindings.append(
            NumberBinding(
                client,
                VERIFY_SHARE_FLAG,
                cache.set_verify_share,
                default=cache.verify_share,
                bounds=verify_share,
            )
        )
    return bindings
