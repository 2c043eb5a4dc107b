"""``Background``: the one daemon thread of a server service (a poll, a flush, a
schedule), with the start/stop every such service needs.

Contract: ``start()`` starts the thread unless it runs already; ``close()`` sets
``stop`` (which the loop waits on), wakes it, joins it for up to ``timeout``
seconds, and may be called twice. The loop itself decides what one round does and
must survive its own exceptions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["Background"]


class Background:
    """One named daemon thread running ``loop(stop)`` until ``close``."""

    def __init__(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        self.name = name
        self.stop = threading.Event()
        self._loop = loop
        self._thread: threading.Thread | None = None
        self._wakers: list[threading.Event] = []

    @property
    def running(self) -> bool:
        return self._thread is not None

    def wakes(self, event: threading.Event) -> None:
        """Also set ``event`` on ``close`` (a loop that waits on it ends sooner)."""
        self._wakers.append(event)

    def start(self) -> None:
        if self._thread is None:
            self.stop.clear()
            self._thread = threading.Thread(
                target=self._loop, args=(self.stop,), name=self.name, daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        for event in self._wakers:
            event.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=timeout)
