"""Helpers of the cache tests: the source of truth, waiting on conditions, flag reads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from flags.client import FlagClient

CACHE = "auth.cache"
L1 = f"{CACHE}.l1"
L2 = f"{CACHE}.l2"
SECRET = b"test-secret-0123456789abcdef"


def wait_until(
    predicate: Callable[[], object], timeout: float = 2.0, interval: float = 0.002
) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; its last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


class Source:
    """The source of truth: a dict of API keys, counting lookups. Thread-safe."""

    def __init__(self, data: dict[str, Any] | None = None, delay: float = 0.0) -> None:
        self.data: dict[str, Any] = dict(data or {})
        self.delay = delay
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, key: str) -> Any:
        with self._lock:
            self.calls.append(key)
        if self.delay:
            time.sleep(self.delay)  # a slow database, so concurrent misses overlap
        return self.data.get(key)

    def count(self, key: str) -> int:
        with self._lock:
            return self.calls.count(key)


class AsyncSource(Source):
    async def __call__(self, key: str) -> Any:  # type: ignore[override]
        with self._lock:
            self.calls.append(key)
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.data.get(key)


def default_data() -> dict[str, Any]:
    return {
        "key-a": {"tenant": "acme", "scopes": ["read", "write"], "active": True},
        "key-b": {"tenant": "globex", "scopes": ["read"], "active": True},
    }


def on(flags: FlagClient, key: str) -> bool:
    """Is ``key`` on for everyone in ``flags``? (Reads the state: no evaluation counted.)"""
    state = flags.state(key)
    return state is not None and state.enabled and not state.killed and state.rollout == 100
