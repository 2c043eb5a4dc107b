"""A circuit breaker, so a dead Redis costs microseconds per call instead of a timeout.

States::

    closed ──(failure_threshold failures in a row)──> open
    open ──(reset_timeout elapsed)──> half-open: exactly one probe call is let through
    half-open ──probe succeeds──> closed
    half-open ──probe fails──> open again, reset_timeout doubled (up to max_reset_timeout)

``allow()`` on a closed breaker is one attribute read; on an open one, one clock
read. Callers must report every allowed call with ``success()`` or ``failure()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Stops calls to a failing dependency for a while, then probes it once.

    Thread-safe: transitions happen under a lock; ``allow()`` on the closed path
    takes none. A probe that never reports back (its caller died) is replaced by
    a new one after ``reset_timeout``.
    """

    def __init__(
        self,
        failure_threshold: int = 3,
        reset_timeout: float = 1.0,
        *,
        max_reset_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.reset_timeout = reset_timeout
        self.max_reset_timeout = max(reset_timeout, max_reset_timeout)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until = 0.0  # 0.0: closed
        self._timeout = reset_timeout
        self._probe_started: float | None = None
        self.opened = 0  # how many times the breaker opened (for metrics)
        self.clean = True  # closed with no failure since the last success: success() is a no-op

    @property
    def state(self) -> BreakerState:
        if self._open_until == 0.0:
            return BreakerState.CLOSED
        if self._probe_started is not None or self._clock() >= self._open_until:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """True if a call may go ahead now. On a half-open breaker, True for one caller."""
        if self._open_until == 0.0:
            return True
        now = self._clock()
        if now < self._open_until:
            return False
        with self._lock:
            if self._open_until == 0.0:
                return True
            started = self._probe_started
            if started is not None and now - started < self._timeout:
                return False
            self._probe_started = now
            return True

    def success(self) -> None:
        """Report a call that worked: closes the breaker and forgets past failures."""
        if not self.clean:
            self.reset()

    def failure(self) -> None:
        """Report a call that failed (refused, timed out, reset, OOM, READONLY...)."""
        with self._lock:
            self.clean = False
            now = self._clock()
            if self._probe_started is not None:
                self._probe_started = None
                self._timeout = min(self._timeout * 2, self.max_reset_timeout)
                self._open_until = now + self._timeout
                return
            self._failures += 1
            if self._open_until == 0.0 and self._failures >= self.failure_threshold:
                self._timeout = self.reset_timeout
                self._open_until = now + self._timeout
                self.opened += 1

    def reset(self) -> None:
        """Close the breaker (an operator or a test knows the dependency is back)."""
        with self._lock:
            self.clean = True
            self._failures = 0
            self._open_until = 0.0
            self._probe_started = None
            self._timeout = self.reset_timeout
