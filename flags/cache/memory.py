"""The in-process layer: a bounded TTL map of Python objects.

Reads take no lock (a dict lookup is atomic); writes and evictions take one.
Eviction is first-in-first-out once ``max_entries`` is reached: cheap, and a
hot key that is evicted is simply read again from below.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from flags.cache.codec import Entry
from flags.errors import ValidationError

__all__ = ["MemoryEntry", "MemoryLayer"]


class MemoryEntry(Entry):
    """An ``Entry`` as the memory layer keeps it.

    ``expires`` (monotonic seconds) already folds in the cache's maximum age of
    the value, counted from ``written_at``; ``stored`` is when this process put
    it here (monotonic), which bounds what is served while the invalidation
    channel is down.
    """

    __slots__ = ("expires", "stored")

    def __init__(
        self,
        value: Any,
        written_at: float,
        negative: bool,
        source: str | None,
        expires: float,
        stored: float,
    ) -> None:
        super().__init__(value, written_at, negative, source)
        self.expires = expires
        self.stored = stored


class MemoryLayer:
    """Layer ``name`` of Python objects in this process.

    ``ttl`` (seconds) bounds how long an entry lives here; callers may ask for
    less per entry. Thread-safe. Never raises on ``get``/``set``/``delete``.

    Raises ``flags.errors.ValidationError`` at construction for a non-positive
    ``max_entries`` or ``ttl``.
    """

    remote = False

    def __init__(self, max_entries: int = 10_000, ttl: float = 60.0, name: str = "l1") -> None:
        if type(max_entries) is not int or max_entries < 1:
            raise ValidationError(
                f"max_entries must be a positive int, got {max_entries!r}", field="max_entries"
            )
        if not ttl > 0:
            raise ValidationError(f"ttl must be positive seconds, got {ttl!r}", field="ttl")
        self.name = name
        self.max_entries = max_entries
        self.ttl = float(ttl)
        self._data: dict[str, MemoryEntry] = {}
        self._lock = threading.Lock()

    @property
    def entries(self) -> Mapping[str, MemoryEntry]:
        """The live map, for lock-free hot-path reads. Do not mutate it; entries in
        it may have expired (check ``expires`` against ``time.monotonic()``)."""
        return self._data

    def get(self, key: str) -> MemoryEntry | None:
        """The entry under ``key`` if it has not expired, else None."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._discard(key, entry)
            return None
        return entry

    def set_ttl(self, ttl: float) -> None:
        """Change the layer's ttl (``flags.cache.tuning`` binds it to a number flag).
        Entries already stored keep their expiry; later writes use ``ttl``. Raises
        ``ValidationError`` unless ``ttl`` is positive and finite."""
        if type(ttl) not in (int, float) or not 0 < ttl < float("inf"):
            raise ValidationError(f"ttl must be positive seconds, got {ttl!r}", field="ttl")
        self.ttl = float(ttl)

    def set(self, key: str, entry: Entry, ttl: float | None = None) -> MemoryEntry:
        """Store ``entry`` under ``key`` for ``min(ttl, self.ttl)`` seconds; returns what
        was stored. Evicts the oldest entries beyond ``max_entries``."""
        now = time.monotonic()
        life = self.ttl if ttl is None else min(ttl, self.ttl)
        stored = MemoryEntry(
            entry.value, entry.written_at, entry.negative, entry.source, now + life, now
        )
        data = self._data
        with self._lock:
            data.pop(key, None)  # re-insert at the end: FIFO order is by last write
            data[key] = stored
            while len(data) > self.max_entries:
                try:
                    del data[next(iter(data))]
                except (StopIteration, KeyError, RuntimeError):
                    break
        return stored

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def _discard(self, key: str, entry: MemoryEntry) -> None:
        """Drop ``key`` only if it still holds ``entry`` (a newer write wins)."""
        with self._lock:
            if self._data.get(key) is entry:
                del self._data[key]

    def clear(self) -> None:
        """Drop everything (in place: the ``entries`` mapping stays the same object)."""
        with self._lock:
            self._data.clear()

    def purge_source(self, source: str) -> int:
        """Drop every entry copied from layer ``source``; returns how many."""
        with self._lock:
            doomed = [k for k, e in self._data.items() if e.source == source]
            for k in doomed:
                del self._data[k]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"MemoryLayer(name={self.name!r}, entries={len(self._data)}, ttl={self.ttl})"
