"""The two drivers of the read core (``flags.cache.core``): blocking and asyncio.

A driver performs the requests the core's generators yield (a remote layer's
get, set or delete; the loader, single-flight) and sends back what happened,
exceptions included: it decides nothing. ``BlockingDriver`` makes blocking calls
(``LayeredCache.get``, and verification on the background worker);
``AsyncioDriver`` awaits redis.asyncio and async loaders and runs anything
synchronous in a thread (``LayeredCache.aget``), so an event loop never blocks
on Redis or on a sync loader. Both count latency, failures and fills the same
way because the core does it for them.

Verification loads the truth by calling the loader itself, never through
single-flight or a layer: the value it checks must not pass through the path
under test.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from flags.cache.codec import Entry
from flags.cache.core import DROP, LOAD, READ, WRITE, ReadCore, Steps

if TYPE_CHECKING:
    from flags.cache import Layer
    from flags.cache.flight import AsyncFlights, Flights
    from flags.cache.metrics import CacheStats

__all__ = ["AsyncioDriver", "BlockingDriver"]

log = logging.getLogger("flagrail.cache")

_perf = time.perf_counter
_NO_LAYERS: list[int] = []  # never mutated: a load that fills nothing


class BlockingDriver(ReadCore):
    """Performs the core's requests with blocking calls."""

    _loader: Callable[[str], Any]
    _async_loader: bool
    _flights: Flights
    metrics: CacheStats

    def _run(self, steps: Steps) -> Any:
        """Perform the core's requests with blocking calls; returns the core's result."""
        lead = None
        key = ""
        try:
            request = next(steps)
            while True:
                op = request[0]
                if op == READ:
                    t0 = _perf()
                    try:
                        got: Any = self.layers[request[1]].get(request[2])
                    except Exception as exc:  # the core judges it: a miss, never the caller's
                        got = exc
                    request = steps.send((got, _perf() - t0))
                elif op == LOAD:
                    key = request[1]
                    answer, missed, lead = self._flights.load(
                        key, request[2], request[3], self._blocking_loader
                    )
                    if request[4]:  # the core has nothing left to do with it
                        steps.close()
                        return answer
                    request = steps.send((answer, missed))
                elif op == WRITE:
                    try:
                        got = self.layers[request[1]].set(request[2], request[3], request[4])
                    except Exception as exc:  # the core counts it; the write is skipped
                        got = exc
                    request = steps.send(got)
                else:
                    assert op == DROP
                    try:
                        got = self.layers[request[1]].delete(request[2])
                    except Exception as exc:  # the core counts it
                        got = exc
                    request = steps.send(got)
        except StopIteration as done:
            return done.value
        finally:
            if lead is not None:
                self._flights.land(key, lead)

    def _load_only(self, key: str, started: float) -> Entry:
        """A read the core planned as a load and nothing else (``_plan`` returned None)."""
        answer, _, lead = self._flights.load(key, _NO_LAYERS, started, self._blocking_loader)
        if lead is not None:
            self._flights.land(key, lead)
        return answer

    def _blocking_loader(self, key: str) -> Any:
        """The loader as a blocking call: an async loader behind a sync ``get`` runs to
        completion on a loop of its own (``LayeredCache`` binds the plain loader
        instead when it is sync)."""
        return asyncio.run(_awaited(self._loader(key)))

    def _verify(self, i: int, key: str, entry: Entry, gen: int) -> None:
        try:
            value = self._loader(key)  # the truth itself: no single-flight, no layer
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
        except Exception:  # the loader failing is not a verdict on the cache
            log.debug("verification load of %r failed", key, exc_info=True)
            return
        self._run(self._verdict(i, key, entry, value, gen))


class AsyncioDriver(ReadCore):
    """Performs the core's requests with awaited calls, on the running event loop."""

    _loader: Callable[[str], Any]
    _async_loader: bool
    _aflights: AsyncFlights
    metrics: CacheStats

    async def _arun(self, steps: Steps) -> Any:
        """Perform the core's requests with awaited calls; returns the core's result."""
        lead: asyncio.Future[Any] | None = None
        key = ""
        answer: Any = None
        filled: frozenset[int] = frozenset()
        try:
            request = next(steps)
            while True:
                op = request[0]
                if op == LOAD:
                    key = request[1]
                    answer, missed, lead = await self._aflights.load(
                        key, request[2], request[3], self._aload
                    )
                    filled = frozenset(missed)
                    if request[4]:  # the core has nothing left to do with it
                        steps.close()
                        return answer
                    request = steps.send((answer, missed))
                    continue
                layer = self.layers[request[1]]
                t0 = _perf()
                try:
                    if op == READ:
                        got: Any = await _call(layer, "aget", "get", request[2])
                    elif op == WRITE:
                        got = await _call(layer, "aset", "set", *request[2:])
                    else:
                        assert op == DROP
                        got = await _call(layer, "adelete", "delete", request[2])
                except Exception as exc:  # the core judges it, as in the sync driver
                    got = exc
                request = steps.send((got, _perf() - t0) if op == READ else got)
        except StopIteration as done:
            return done.value
        finally:
            if lead is not None:
                self._aflights.land(key, lead, answer, filled)

    async def _aload_only(self, key: str, started: float) -> Entry:
        """``_load_only`` on the event loop."""
        answer, _, lead = await self._aflights.load(key, [], started, self._aload)
        if lead is not None:
            self._aflights.land(key, lead, answer, frozenset())
        return answer

    async def _aload(self, key: str) -> Entry:
        """One loader call for a fill, off the event loop when the loader is sync."""
        self.metrics.loads += 1
        if self._async_loader:
            value = await self._loader(key)  # type: ignore[misc]
        else:
            value = await asyncio.to_thread(self._loader, key)
            if inspect.isawaitable(value):  # a callable that returns a coroutine
                value = await value
        return Entry(value, time.time(), value is None, None)

    async def _averify(self, i: int, key: str, entry: Entry, gen: int) -> None:
        try:
            value = await self._loader(key)  # type: ignore[misc]
        except Exception:  # the loader failing is not a verdict on the cache
            log.debug("verification load of %r failed", key, exc_info=True)
            return
        await self._arun(self._verdict(i, key, entry, value, gen))


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _call(layer: Layer, async_name: str, sync_name: str, *args: Any) -> Any:
    """``layer.<async_name>(*args)`` awaited, or its sync twin in a thread when the
    layer has no async one: never a blocking call on the event loop."""
    method = getattr(layer, async_name, None)
    if method is not None:
        return await method(*args)
    return await asyncio.to_thread(getattr(layer, sync_name), *args)
