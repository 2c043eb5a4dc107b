"""The cache's background worker: one daemon thread running small jobs, some delayed.

Verifications, delayed re-deletes of invalidated keys, invalidation retries and
counter reports run here, off the request path. The queue is bounded: ``submit``
drops a job (and counts it in ``dropped``) rather than grow without limit when
the worker falls behind or is not running. A job that raises is logged and the
worker goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Worker"]

log = logging.getLogger("flagrail.cache")

_mono = time.monotonic


class Worker:
    """One daemon thread running jobs in due order. Thread-safe.

    ``submit`` returns False (and drops the job) when ``max_pending`` jobs are
    waiting or the worker is not running.
    """

    def __init__(self, name: str, max_pending: int = 1024) -> None:
        self.name = name
        self.max_pending = max_pending
        self.dropped = 0
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False
        self._busy = False

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._running = True
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, delay: float = 0.0) -> bool:
        """Run ``fn(*args)`` on the worker after ``delay`` seconds; False if dropped."""
        with self._cond:
            if not self._running or len(self._heap) >= self.max_pending:
                self.dropped += 1
                return False
            heapq.heappush(self._heap, (_mono() + delay, next(self._seq), fn, args))
            self._cond.notify()
        return True

    def wait_idle(self, timeout: float = 5.0, *, include_delayed: bool = False) -> bool:
        """Wait until no job is running or due now (or at all, with ``include_delayed``)."""
        deadline = _mono() + timeout
        while _mono() < deadline:
            with self._cond:
                now = _mono()
                pending = [j for j in self._heap if include_delayed or j[0] <= now]
                if not pending and not self._busy:
                    return True
            time.sleep(0.002)
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread; pending jobs are dropped."""
        with self._cond:
            self._running = False
            self._heap.clear()
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._running:
                    if self._heap and self._heap[0][0] <= _mono():
                        break
                    wait = self._heap[0][0] - _mono() if self._heap else None
                    self._cond.wait(wait)
                if not self._running:
                    return
                _, _, fn, args = heapq.heappop(self._heap)
                self._busy = True
            try:
                fn(*args)
            except Exception:  # a background job of ours; keep the worker alive
                log.exception("cache background job %r failed", fn)
            finally:
                with self._cond:
                    self._busy = False
