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


class StallMeter:
    """How late a 1 ms sleeper thread wakes up: the scheduler and GIL stalls of a busy
    machine, which a wall-clock latency bound must not blame on the code under test.

    ``excess(start, end)`` is the total lateness of the ticks that overlap the interval.
    """

    def __init__(self, tick: float = 0.001) -> None:
        self.tick = tick
        self.samples: list[tuple[float, float]] = []  # (woke at, lateness)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-meter", daemon=True)

    def __enter__(self) -> StallMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.is_set():
            asleep = time.perf_counter()
            time.sleep(self.tick)
            woke = time.perf_counter()
            self.samples.append((woke, max(0.0, woke - asleep - self.tick)))

    def excess(self, start: float, end: float) -> float:
        total = 0.0
        for woke, late in list(self.samples):
            if woke > start and woke - late - self.tick < end:
                total += late
        return total
