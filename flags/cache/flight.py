"""Single-flight: concurrent misses of one key share one loader call.

``Flights`` serves threads (the leader holds a lock its followers wait on);
``AsyncFlights`` serves tasks (one future per key and event loop). Both share
``Landed``, the last landed load per key: a call that started before a load of
its key landed takes that answer instead of loading again (its own layer reads
may have been in flight while the load ran). The decisions are the same for
both; only the waiting differs.

A leader gets its flight back and must ``land`` it after its fills, so a
follower is left only the layers the leader did not fill (its flags may differ).
A loader error reaches every caller of the flight; the next call loads again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from flags.cache.codec import Entry

if TYPE_CHECKING:
    from flags.cache.invalidation import Generations
    from flags.cache.metrics import CacheStats

__all__ = ["AsyncFlights", "Flight", "Flights", "Landed"]

_perf = time.perf_counter
_MAX_LANDED = 4096


class Landed:
    """The last landed load per key, with the invalidation and layer generations
    (``gens``) it landed in."""

    def __init__(self, gens: Generations) -> None:
        self.gens = gens
        self._landed: dict[str, tuple[float, int, int, Entry, frozenset[int]]] = {}

    def recall(
        self, key: str, started: float, missed: list[int]
    ) -> tuple[Entry, list[int], frozenset[int]] | None:
        """The answer of a load of ``key`` that landed after ``started`` (and after the
        last invalidation or layer change), with the layers it did not fill; else None."""
        landed = self._landed.get(key)
        if landed is None:
            return None
        at, gen, layer_gen, entry, filled = landed
        gens = self.gens
        if at < started or gen != gens.gen or layer_gen != gens.layer:
            return None
        return entry, [i for i in missed if i not in filled], filled

    def remember(self, key: str, entry: Entry, filled: frozenset[int]) -> None:
        if len(self._landed) >= _MAX_LANDED:
            self._landed.clear()
        self._landed[key] = (_perf(), self.gens.gen, self.gens.layer, entry, filled)


class Flight:
    """One loader call in flight. ``done`` is held by the leader until its answer is
    stored (a bare lock: cheaper to create than an Event, and most flights have no
    waiter); ``filled`` is the layers the leader stores it in."""

    __slots__ = ("done", "error", "filled", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Entry | None = None
        self.error: BaseException | None = None
        self.filled: frozenset[int] = frozenset()

    def wait(self) -> None:
        self.done.acquire()
        self.done.release()


class Flights:
    """Single-flight for threads, counting loader calls in ``metrics.loads``. Thread-safe."""

    def __init__(self, landed: Landed, metrics: CacheStats) -> None:
        self.landed = landed
        self.metrics = metrics
        self.pending: dict[str, Flight] = {}

    def load(
        self, key: str, missed: list[int], started: float, loader: Callable[[str], Any]
    ) -> tuple[Entry, list[int], Flight | None]:
        """``loader(key)`` (blocking) once per key however many threads miss it together:
        the answer, the layers left to fill, and the flight to ``land`` (None for a
        follower). Raises what ``loader`` raises, in every caller of the flight."""
        mine = Flight()
        flight = self.pending.setdefault(key, mine)  # atomic: one leader per key
        if flight is not mine:
            flight.wait()
            if flight.error is not None:
                raise flight.error
            assert flight.value is not None
            return flight.value, [i for i in missed if i not in flight.filled], None
        recalled = self.landed.recall(key, started, missed)
        if recalled is not None:
            # Followers that joined this flight take the recalled answer too.
            mine.value, mine.filled = recalled[0], recalled[2]
            if self.pending.get(key) is mine:
                del self.pending[key]
            mine.done.release()
            return recalled[0], recalled[1], None
        self.metrics.loads += 1
        try:
            value = loader(key)
        except BaseException as exc:
            mine.error = exc
            self.land(key, mine)
            raise
        mine.value = answer = Entry(value, time.time(), value is None, None)
        if missed:
            mine.filled = frozenset(missed)
        return answer, missed, mine

    def land(self, key: str, flight: Flight) -> None:
        """Publish the leader's answer (after its fills) and release its followers."""
        if flight.value is not None and flight.error is None:
            self.landed.remember(key, flight.value, flight.filled)
        if self.pending.get(key) is flight:
            del self.pending[key]
        flight.done.release()


class AsyncFlights:
    """Single-flight for tasks, per event loop. Use from the loop's thread."""

    def __init__(self, landed: Landed) -> None:
        self.landed = landed
        self.pending: dict[tuple[str, int], asyncio.Future[Any]] = {}

    async def load(
        self,
        key: str,
        missed: list[int],
        started: float,
        call: Callable[[str], Awaitable[Entry]],
    ) -> tuple[Entry, list[int], asyncio.Future[Any] | None]:
        """``Flights.load`` for tasks. A cancelled leader's followers lead themselves."""
        loop = asyncio.get_running_loop()
        flight_key = (key, id(loop))
        while True:
            pending = self.pending.get(flight_key)
            if pending is None or pending.get_loop() is not loop:
                break
            try:
                answer, filled = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    continue  # the leader was cancelled, not us: lead ourselves
                raise
            return answer, [i for i in missed if i not in filled], None
        recalled = self.landed.recall(key, started, missed)
        if recalled is not None:
            return recalled[0], recalled[1], None
        future: asyncio.Future[Any] = loop.create_future()
        self.pending[flight_key] = future
        try:
            answer = await call(key)
        except asyncio.CancelledError:
            self.pending.pop(flight_key, None)
            future.cancel()
            raise
        except BaseException as exc:
            self.pending.pop(flight_key, None)
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        return answer, missed, future

    def land(
        self, key: str, future: asyncio.Future[Any], answer: Entry, filled: frozenset[int]
    ) -> None:
        """Publish the leader's answer and the layers it filled (after its fills) and
        wake its followers."""
        self.landed.remember(key, answer, filled)
        flight_key = (key, id(future.get_loop()))
        if self.pending.get(flight_key) is future:
            del self.pending[flight_key]
        if not future.done():
            future.set_result((answer, filled))
