"""The read core of ``LayeredCache``: every decision of a read, and no I/O.

A read is decided here: which layers take part and in which mode (their flags,
evaluated for the caller's tenant), what a layer's answer means (hit, miss,
rejected entry, failure, open circuit), when to load, what to fill, how a shadow
layer's entry is judged, which live hits are verified, and what every outcome
counts and tells the guard. Memory layers are read and written here directly
(they are in-process dicts); everything that leaves the process is asked of the
caller as a *request*, so one core serves both drivers::

    (READ, i, key)                  -> (entry | exception, seconds)   a remote layer's get
    (LOAD, key, missed, started, last) -> (answer, layers to fill)  the loader, single-flight
    (WRITE, i, key, entry, ttl)     -> stored bool | exception        a remote layer's set
    (DROP, i, key)                  -> None | exception               a remote layer's delete

``_resolve`` and ``_judge`` are generators that yield these requests and return
their result (a ``LOAD`` marked ``last`` has nothing after it: its answer is the
result, and the driver need not resume the generator). The blocking driver
(``LayeredCache.get``) and the asyncio one (``aget``) perform them
(``flags.cache.drivers``), as httpx's sync and async transports share one
request model. A driver never decides anything itself.

The memory-hit fast path (``_hit``) needs no request at all and stays a plain
method: it is most of the traffic.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from bisect import bisect_left as _bisect
from collections.abc import Callable, Generator
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from flags.cache.canonical import same
from flags.cache.codec import Entry, Rejection
from flags.cache.metrics import LATENCY_BUCKETS
from flags.errors import CacheError, CorruptEntryError

if TYPE_CHECKING:
    from flags.cache import Layer
    from flags.cache.guard import Breach, Guard, LayerWatch
    from flags.cache.invalidation import Generations, Invalidator
    from flags.cache.metrics import LayerStats

__all__ = ["DROP", "LOAD", "READ", "WRITE", "Mode", "ReadCore", "Steps"]

log = logging.getLogger("flagrail.cache")

_perf = time.perf_counter
_mono = time.monotonic

READ, LOAD, WRITE, DROP = 0, 1, 2, 3

# What the core's generators yield, are sent, and return.
Steps = Generator[tuple[Any, ...], Any, Any]


class Mode(IntEnum):
    """How a layer takes part in one call."""

    OFF = 0
    LIVE = 1
    SHADOW = 2


# Modes as plain ints on the hot path (an IntEnum hashes in Python, and a call's
# modes are part of its single-flight key); ``Mode`` is their public face.
_OFF, _LIVE, _SHADOW = int(Mode.OFF), int(Mode.LIVE), int(Mode.SHADOW)


class Miss:
    """The fast path's "not answered here", carrying the first layer's mode."""

    __slots__ = ("mode",)

    def __init__(self, mode: int | None) -> None:
        self.mode = mode


MISS_NONE = Miss(None)  # no memory layer in front
_MISS_OFF = Miss(_OFF)
_MISS_LIVE = Miss(_LIVE)
_MISS_SHADOW = Miss(_SHADOW)
_UNAVAILABLE = object()  # a layer call failed or was skipped by its circuit
_SKIP = -1  # in a plan: a remote layer live for the call whose circuit is open


class NullWatch:
    """Stands in for a guard window when the cache has no guard."""

    tripped = False

    def read(self, corrupt: bool = False) -> None:
        pass

    def call(self, failed: bool = False) -> None:
        pass

    def verified(self, match: bool) -> None:
        pass

    def reset(self) -> None:
        pass


class Channel:
    """What the hot path reads of the invalidation channel: ``last_heard``."""

    def __init__(self, last_heard: float) -> None:
        self.last_heard = last_heard


NO_CHANNEL = Channel(math.inf)  # nothing to hear: entries never go stale for it
NOT_LISTENING = Channel(-math.inf)  # a channel exists but nobody listens: always down


class ReadCore:
    """The decisions of a ``LayeredCache`` read (see the module). ``LayeredCache``
    sets the state these methods read and performs the requests they yield."""

    layers: list[Layer]
    guard: Guard | None
    verify_share: float
    negative_ttl: float
    remote_negatives: bool
    max_age: float
    channel_down_max_age: float
    _remote: list[bool]
    _stats: list[LayerStats]
    _watches: list[LayerWatch | NullWatch]
    _memory: list[Layer]
    _flag_keys: list[str]
    _shadow_keys: list[str]
    _index: dict[str, int]
    _range: range
    _dead: frozenset[str]
    _bypassed: list[bool]
    _gens: Generations
    _invalidator: Invalidator
    _channel: Any
    _down_after: float
    _verify_acc: float
    _state_lock: Any
    _seen: object
    _live: list[bool | None]
    _bypass_version: list[int]
    _fast: Layer | None
    _fast_ok: bool
    _fast_get: Callable[[str], Any] | None
    _fast_flag: str
    _fast_shadow: str
    _fast_stats: LayerStats
    _is_enabled: Callable[..., bool]
    flags: Any

    # ----------------------------------------------------------------- modes
    def _refresh(self) -> None:
        """Recompute what depends on the flag snapshot; react to layers going live
        (epoch bump) or dead (purge what memory layers copied from them)."""
        with self._state_lock:
            snapshot = self.flags.snapshot
            if snapshot is self._seen:
                return
            states = snapshot.flags if snapshot is not None else {}
            env = getattr(self.flags, "environment", "")
            newly_dead: list[int] = []
            for i, layer in enumerate(self.layers):
                state = states.get(self._flag_keys[i])
                live = state is not None and state.enabled and not state.killed
                version = state.version if state is not None else 0
                marker = f"{env}:v{version}"
                if self._bypassed[i] and live and version > self._bypass_version[i]:
                    log.warning("cache layer %s back after a guard bypass", self._flag_keys[i])
                    self._bypassed[i] = False
                    self._watches[i].reset()
                    if self._remote[i]:
                        layer.bump(marker)  # type: ignore[attr-defined]
                was = self._live[i]
                if live and was is not True and self._remote[i]:
                    layer.bump(marker)  # type: ignore[attr-defined]
                if not live and was is True:
                    newly_dead.append(i)
                self._live[i] = live
            self._recompute_dead()
            if newly_dead:
                self._purge(newly_dead)
            self._seen = snapshot

    def _recompute_dead(self) -> None:
        self._dead = frozenset(
            layer.name
            for i, layer in enumerate(self.layers)
            if not self._live[i] or self._bypassed[i]
        )
        self._fast_ok = self._fast is not None and not self._bypassed[0]

    def _purge(self, indices: list[int]) -> None:
        with self._gens.lock:
            self._gens.layer += 1
            for i in indices:
                dead = self.layers[i]
                for memory in self._memory:
                    if memory is dead:
                        memory.clear()
                    elif hasattr(memory, "purge_source"):
                        memory.purge_source(dead.name)
                    else:
                        memory.clear()

    def _breach_callback(self, i: int) -> Callable[[Breach], None]:
        ref = weakref.ref(self)

        def on_breach(breach: Breach) -> None:
            cache = ref()
            if cache is not None:
                cache._bypass(i, breach)

        return on_breach

    def _bypass(self, i: int, breach: Breach) -> None:
        """Stop using layer ``i`` in this process now (the guard saw a breach)."""
        with self._state_lock:
            self._bypassed[i] = True
            self._bypass_version[i] = breach.version
            self._recompute_dead()
            self._purge([i])

    def _mode(self, i: int, tenant: str | None) -> int:
        """Layer ``i``'s mode for a call for ``tenant``: its flags, evaluated now."""
        if self._bypassed[i]:
            self._stats[i].bypass_guard += 1
            return _OFF
        enabled = self._is_enabled
        if not enabled(self._flag_keys[i], tenant):
            return _OFF
        if enabled(self._shadow_keys[i], tenant):
            return _SHADOW
        return _LIVE

    # ----------------------------------------------------------------- the fast path
    def _hit(self, key: str, tenant: str | None, t0: float) -> Any:
        """A live memory hit in the first layer (its value), or a ``Miss``."""
        if self.flags.snapshot is not self._seen:
            self._refresh()
        if not self._fast_ok:
            if self._fast is None:
                return MISS_NONE
            self._fast_stats.bypass_guard += 1
            return _MISS_OFF
        if not self._is_enabled(self._fast_flag, tenant):
            return _MISS_OFF
        if self._is_enabled(self._fast_shadow, tenant):
            return _MISS_SHADOW
        e = self._fast_get(key)  # type: ignore[misc]
        if e is None:
            return _MISS_LIVE
        now = _mono()
        if (
            e.expires > now
            and (
                now - e.stored <= self.channel_down_max_age
                or now - self._channel.last_heard <= self._down_after
            )
            and (e.source is None or e.source not in self._dead)
        ):
            st = self._fast_stats
            st.hits += 1
            if not st.hits & 15:
                st.observe(_perf() - t0)
            if self.verify_share:
                self._maybe_verify(0, key, e)
            return e.value
        return _MISS_LIVE

    # ----------------------------------------------------------------- a read
    def _plan(self, tenant: str | None, first: int | None) -> list[int] | None:
        """Each layer's mode for a read that the fast path did not answer, evaluated for
        ``tenant`` (the first layer's is ``first`` when not None), a live remote layer
        whose circuit is open marked ``_SKIP`` (its breaker is asked once per call).
        None when no layer can take part: the open circuits are counted, and the read
        is a load and nothing else (``LOAD`` without a generator: the common dead-Redis
        path pays for no request machinery)."""
        plan: list[int] = []
        reads = False
        for i in self._range:
            mode = first if i == 0 and first is not None else self._mode(i, tenant)
            if mode:
                if self._remote[i] and not self.layers[i].available():  # type: ignore[attr-defined]
                    mode = _SKIP
                else:
                    reads = True
            plan.append(mode)
        if reads:
            return plan
        for i, mode in enumerate(plan):
            if mode == _SKIP:
                self._circuit_open(i)
        return None

    def _resolve(self, key: str, plan: list[int], started: float) -> Steps:
        """Read the layers in order, each in its mode of ``plan``, up to the first live
        answer; load on a miss; judge shadows; fill the layers that missed. Returns the
        answer ``Entry``."""
        gens = self._gens
        gen, layer_gen = gens.gen, gens.layer
        shadows: list[tuple[int, Entry]] | None = None
        missed: list[int] = []
        answer: Entry | None = None
        served_by = -1
        for i in self._range:
            mode = plan[i]
            if not mode:
                continue
            if mode == _SKIP:
                got: Any = self._circuit_open(i)
            elif not self._remote[i]:
                got = self._read_memory(i, self.layers[i], key)
            else:
                got, elapsed = yield (READ, i, key)
                st = self._stats[i]
                st.buckets[_bisect(LATENCY_BUCKETS, elapsed)] += 1
                st.latency_sum += elapsed
                st.latency_count += 1
                if got.__class__ is Entry:  # the common case inline: a hit
                    st.hits += 1
                    if self.guard is not None:
                        self._watches[i].read()
                else:
                    got = self._read_outcome(i, got)
            if got is None:
                missed.append(i)
            elif got is _UNAVAILABLE:
                continue
            elif mode == _SHADOW:
                if shadows is None:
                    shadows = []
                shadows.append((i, got))
            else:
                answer, served_by = got, i
                break
        if answer is None:
            last = shadows is None and not missed  # nothing to judge or fill afterwards
            answer, missed = yield (LOAD, key, missed, started, last)
        if shadows is not None:
            for i, entry in shadows:
                if not (yield from self._judge(i, key, entry, answer, "shadow")):
                    missed.append(i)  # dropped: store the right answer instead
        if missed:
            yield from self._fill(key, missed, answer, gen, layer_gen)
        if served_by >= 0 and self.verify_share:
            self._maybe_verify(served_by, key, answer)
        return answer

    def _read_outcome(self, i: int, got: Any) -> Any:
        """What remote layer ``i``'s answer to a read means: an entry, None (a miss,
        including a rejected entry) or ``_UNAVAILABLE``; counted (latency aside)."""
        if got is None or got.__class__ is Entry:
            return self._answered(i, got)
        if isinstance(got, CorruptEntryError):
            self._rejected(i, got)
            return None
        if isinstance(got, BaseException):
            self._call_failed(i, got)
            return _UNAVAILABLE
        return self._answered(i, got)  # an Entry subclass

    def _answered(self, i: int, entry: Entry | None) -> Entry | None:
        """Count a remote read of layer ``i`` that answered: a hit, or a miss (None)."""
        st = self._stats[i]
        if entry is None:
            st.misses += 1
        else:
            st.hits += 1
        if self.guard is not None:
            self._watches[i].read()
        return entry

    def _call_failed(self, i: int, exc: BaseException) -> None:
        """Count a failed call to remote layer ``i``. A ``CacheError`` is the layer
        saying so; anything else is a layer bug, logged, which must not fail the
        caller either: the read goes below, the write is skipped."""
        self._stats[i].errors += 1
        self._watches[i].call(failed=True)
        if not isinstance(exc, CacheError):
            log.warning("cache layer %s failed unexpectedly", self._flag_keys[i], exc_info=exc)

    def _read_memory(self, i: int, layer: Layer, key: str) -> Entry | None:
        st = self._stats[i]
        entry = layer.get(key)
        if entry is not None:
            now = _mono()
            stored = getattr(entry, "stored", now)
            if (
                now - stored > self.channel_down_max_age
                and now - self._channel.last_heard > self._down_after
            ) or (entry.source is not None and entry.source in self._dead):
                entry = None
        if entry is None:
            st.misses += 1
        else:
            st.hits += 1
        return entry

    def _circuit_open(self, i: int) -> object:
        """Count a read skipped by layer ``i``'s open circuit; ``_UNAVAILABLE``.

        A layer whose circuit is open is failing: the guard counts it, so a dead
        Redis trips the layer's kill switch rather than hiding behind the breaker.
        """
        self._stats[i].bypass_circuit += 1
        self._watches[i].call(failed=True)
        return _UNAVAILABLE

    def _rejected(self, i: int, exc: CorruptEntryError) -> None:
        """Count a remote entry of layer ``i`` rejected on read: a miss, and why."""
        st = self._stats[i]
        st.misses += 1
        try:
            reason = Rejection(exc.field)
        except ValueError:
            reason = Rejection.FORMAT
        attr = f"corrupt_{reason.value}" if reason.corrupt else f"stale_{reason.value}"
        if not hasattr(st, attr):  # a refusal that is not about a stored entry
            attr = "corrupt_format"
        setattr(st, attr, getattr(st, attr) + 1)
        if reason.corrupt:
            log.warning("cache layer %s: corrupt entry rejected (%s)", self._flag_keys[i], exc)
        self._watches[i].read(corrupt=reason.corrupt)

    # ----------------------------------------------------------------- writes
    def _ttl(self, answer: Entry) -> float:
        if answer.negative:
            return self.negative_ttl
        return self.max_age - (time.time() - answer.written_at)

    def _fill(self, key: str, missed: list[int], answer: Entry, gen: int, layer_gen: int) -> Steps:
        """Store ``answer`` in the layers that ``missed`` it: memory here, remote ones
        by request, unless ``key`` was invalidated or the layers changed meanwhile."""
        ttl = self._fill_memory(key, missed, answer, gen, layer_gen)
        if ttl <= 0:
            return
        for i in missed:
            if not self._remote[i] or not self._may_write_remote(i, key, answer, gen):
                continue
            if not self._write_outcome(i, key, (yield (WRITE, i, key, answer, ttl))):
                self._dropped(i, (yield (DROP, i, key)))

    def _fill_memory(
        self, key: str, missed: list[int], answer: Entry, gen: int, layer_gen: int
    ) -> float:
        """Store ``answer`` in the ``missed`` memory layers, unless ``key`` was
        invalidated or the layers changed since the read began. Returns the TTL the
        remote layers are to get; 0 or less: store nothing anywhere."""
        ttl = self._ttl(answer)
        if ttl <= 0:
            return ttl
        memory = [i for i in missed if not self._remote[i]]
        if memory:
            with self._gens.lock:
                if self._gens.layer == layer_gen and not self._gens.since(key, gen):
                    for i in memory:
                        if not self._bypassed[i]:
                            self.layers[i].set(key, answer, ttl)
        return ttl

    def _may_write_remote(self, i: int, key: str, answer: Entry, gen: int) -> bool:
        if answer.negative and not self.remote_negatives:
            return False
        if self._bypassed[i] or self._gens.since(key, gen):
            return False
        if not self.layers[i].available():  # type: ignore[attr-defined]
            self._stats[i].bypass_circuit += 1
            return False
        return True

    def _write_outcome(self, i: int, key: str, result: Any) -> bool:
        """Count remote layer ``i``'s answer to a write. False when the layer's own
        write check refused it (``Rejection.WRITE``): its write path turns values into
        others, so what it holds of ``key`` is suspect too and is to be dropped. A
        failed write check is reported to the guard as a failed verification; a
        passed one proves nothing about what the layer will serve: counted only."""
        st = self._stats[i]
        if isinstance(result, CorruptEntryError):
            if result.field == Rejection.WRITE:
                st.verify_write += 1
                st.mismatch_write += 1
                log.warning("cache layer %s: write refused: %s", self._flag_keys[i], result)
                self._watches[i].verified(False)
                return False
            st.corrupt_bookkeeping += 1
            log.warning("cache layer %s: %s", self._flag_keys[i], result)
            self._watches[i].read(corrupt=True)
            return True
        if isinstance(result, BaseException):
            self._call_failed(i, result)
            return True
        if result is not False:  # False: refused by a fresh invalidation's tombstone
            st.writes += 1
        if getattr(self.layers[i], "check_writes", False):
            st.verify_write += 1
        self._watches[i].call()
        return True

    def _dropped(self, i: int, result: Any) -> None:
        """Count remote layer ``i``'s answer to a delete."""
        if isinstance(result, BaseException):
            self._stats[i].errors += 1
            self._watches[i].call(failed=True)
        else:
            self._watches[i].call()

    # ----------------------------------------------------------------- judging
    def _same(self, a: Entry, b: Entry) -> bool:
        """Equal as values, judged by ``flags.cache.canonical.same``: never through a
        layer's serializer, so a broken write path cannot make a wrong value agree
        with the truth (a tuple from the loader still equals its JSON list)."""
        if a.negative or b.negative:
            return a.negative == b.negative
        return same(a.value, b.value)

    def _judge(self, i: int, key: str, entry: Entry, truth: Entry, check: str) -> Steps:
        """Compare ``entry`` (served by, or shadowed in, layer ``i``) with ``truth``;
        count, report to the guard, and drop a wrong value (a remote drop by request).
        Returns True when they agree."""
        match = self._same(entry, truth)
        st = self._stats[i]
        if check == "verify":
            st.verify_verify += 1
            if not match:
                st.mismatch_verify += 1
        else:
            st.verify_shadow += 1
            if not match:
                st.mismatch_shadow += 1
        blame = self._index.get(entry.source, i) if entry.source is not None else i
        if not match:
            log.warning(
                "cache layer %s disagrees with the layer below on %r (%s)",
                self._flag_keys[blame],
                key,
                check,
            )
            if check == "verify":  # a fill racing this background check must not restore it
                self._gens.note(key)
            for memory in self._memory:  # copies of the wrong value, wherever they went
                memory.delete(key)
            for j in (i, blame) if blame != i else (i,):
                if self._remote[j] and self.layers[j].available():  # type: ignore[attr-defined]
                    self._dropped(j, (yield (DROP, j, key)))
        self._watches[blame].verified(match)
        return match

    # ----------------------------------------------------------------- verification
    def _maybe_verify(self, i: int, key: str, entry: Entry) -> None:
        """Schedule a verification of ``verify_share`` of live hits (deterministically
        spread: every 1/share-th hit)."""
        acc = self._verify_acc + self.verify_share
        if acc >= 1.0:
            self._verify_acc = acc - 1.0
            self._schedule_verify(i, key, entry)  # type: ignore[attr-defined]
        else:
            self._verify_acc = acc

    def _verdict(self, i: int, key: str, entry: Entry, value: Any, gen: int) -> Steps:
        """Judge a verification against the loader's ``value``, unless ``key`` was
        invalidated since the hit: the source of truth then moved on (a revocation),
        and the hit was not wrong."""
        if self._gens.since(key, gen):
            return
        truth = Entry(value, time.time(), value is None, None)
        yield from self._judge(i, key, entry, truth, "verify")
