"""LayeredCache: memory -> Redis -> loader, every layer behind its own flag.

**Flags.** Layer ``l`` of cache ``c`` is gated by flag ``c.l``, and runs in
shadow under ``c.l.shadow``; both are declared at construction and evaluated
through the ``FlagClient`` with the caller's tenant on every call, for reads and
writes alike, so a disabled or killed layer is skipped on the next call. A
shadow layer is read and written, but the answer comes from below and every
disagreement is counted.

**Answers.** A layer that fails (refused, timeout, OOM, READONLY...), has an
open circuit, or holds an entry that does not verify is a miss: the next layer
or the loader answers, the caller never sees the exception, and counters (see
``flags.cache.metrics``) show what happened. A layer that failed once in a call
is not called again in that call, so a call costs at most one socket timeout
per remote layer. Only the loader's own exceptions reach the caller.

**Kill means gone.** Each remote layer has an epoch (``flags.cache.redis``):
whenever this process sees a layer's flag go live (first sight, and after every
kill or disable), it asks for an epoch bump keyed by the environment and flag
state version; the bump is applied before the layer is used again, once per
version however many processes see it. Entries written before a kill therefore
carry an older epoch and are never served when the layer comes back. When a
layer goes dead (flag off or killed globally, or bypassed by the guard), memory
layers drop what they copied from it in the same step, and no memory entry
whose source is dead is served, from the first call that sees the new flag
snapshot (every process reacts to its own snapshot). Fills racing with a kill
are discarded (a generation counter checked under the fill lock).

**Negative results** ("no such key") are kept in memory layers only, for
``negative_ttl`` seconds, unless ``remote_negatives=True``.

**Invalidation.** ``invalidate(key)`` deletes the key in every layer, leaving a
tombstone in Redis for ``invalidation_hold`` (2 s) that refuses writes of the key,
so a reader that loaded the old value just before cannot write it back; it
publishes the key on the cache's channel (the SDK's Redis, ``flags.redis_url``,
when there is one) so every process's memory layers drop it within
milliseconds; and 250 ms later it does all that once more. While the channel is
down, memory entries older than ``channel_down_max_age`` (1 s) are not served;
after a reconnect, memory layers are cleared. Positive entries never outlive
``max_age`` seconds from the moment they left the loader, whatever layer they
sit in.

**Single-flight.** Concurrent misses of one key (with the same layer modes) in
one process share one resolution: the loader runs once.

**Verification.** A ``verify_share`` of live hits is re-read from the loader on
a background thread and compared as decoded values; a mismatch deletes the entry
and is counted (and reported to the guard against the layer the value came from).
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
import math
import threading
import time
import weakref
from bisect import bisect_left as _bisect
from collections.abc import Awaitable, Callable, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flags.cache.canonical import same
from flags.cache.codec import Entry, Rejection
from flags.cache.guard import Breach, Guard, LayerWatch
from flags.cache.invalidation import InvalidationListener, encode_key
from flags.cache.metrics import LATENCY_BUCKETS, CacheStats, LayerStats
from flags.cache.redis import DEFAULT_PREFIX
from flags.declarations import declare
from flags.errors import CacheError, CorruptEntryError, ValidationError
from flags.model import FlagKind, Snapshot, validate_flag_key

if TYPE_CHECKING:
    from flags.cache import FlagSource, Layer

__all__ = ["LayeredCache", "Mode"]

log = logging.getLogger("flagrail.cache")

Loader = Callable[[str], Any] | Callable[[str], Awaitable[Any]]

_perf = time.perf_counter
_mono = time.monotonic
# Seconds between additions of layer counters to the flag client's counters.
COUNTER_REPORT_INTERVAL = 1.0


class Mode(IntEnum):
    """How a layer takes part in one call."""

    OFF = 0
    LIVE = 1
    SHADOW = 2


# Modes as plain ints on the hot path (an IntEnum hashes in Python, and a call's
# modes are part of its single-flight key); ``Mode`` is their public face.
_OFF, _LIVE, _SHADOW = int(Mode.OFF), int(Mode.LIVE), int(Mode.SHADOW)


class _Miss:
    """The fast path's "not answered here", carrying the first layer's mode."""

    __slots__ = ("mode",)

    def __init__(self, mode: int | None) -> None:
        self.mode = mode


_MISS_NONE = _Miss(None)  # no memory layer in front
_MISS_OFF = _Miss(_OFF)
_MISS_LIVE = _Miss(_LIVE)
_MISS_SHADOW = _Miss(_SHADOW)
_UNAVAILABLE = object()  # a layer call failed or was skipped by its circuit


class _NullWatch:
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


class _Channel:
    """What the hot path reads of the invalidation channel: ``last_heard``."""

    def __init__(self, last_heard: float) -> None:
        self.last_heard = last_heard


_NO_CHANNEL = _Channel(math.inf)  # nothing to hear: entries never go stale for it
_NOT_LISTENING = _Channel(-math.inf)  # a channel exists but nobody listens: always down


class _Flight:
    """One loader call in flight. ``done`` is held by the leader until its answer is
    stored (a bare lock: cheaper to create than an Event, and most flights have no
    waiter); ``filled`` is the layers the leader stores it in."""

    __slots__ = ("done", "error", "filled", "value")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None
        self.filled: frozenset[int] = frozenset()

    def wait(self) -> None:
        self.done.acquire()
        self.done.release()


class _Worker:
    """One daemon thread running small jobs, optionally after a delay. Bounded:
    ``submit`` drops the job (returns False) when ``max_pending`` are waiting or
    the worker is not running."""

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


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class LayeredCache:
    """A read-through cache of ``loader`` over ``layers``, each gated by a flag.

    ``name`` must be a valid flag key prefix; layer flags are ``<name>.<layer>``
    and ``<name>.<layer>.shadow``. ``loader(key)`` (sync or async) returns the
    value, or None for "no such key"; values must survive the remote layers'
    serializer (JSON by default). ``flags`` is the ``FlagClient`` (anything with
    ``is_enabled``, ``state``, ``snapshot``, ``on_change``, ``environment``).

    ``get``/``aget`` never raise for a cache failure; they raise what the loader
    raises. ``start()`` begins the invalidation listener and the background
    worker (verification, delayed deletes); without it the channel counts as
    down and nothing is verified. Thread-safe; ``aget`` may run on any loop.

    Raises ``ValidationError`` at construction for a bad name, duplicate layer
    names, a layer already used by another cache, or a ``verify_share`` outside 0..1.
    """

    def __init__(
        self,
        name: str,
        layers: Sequence[Layer],
        loader: Loader,
        flags: FlagSource,
        *,
        guard: Guard | None = None,
        verify_share: float = 0.01,
        negative_ttl: float = 5.0,
        remote_negatives: bool = False,
        max_age: float = 300.0,
        channel_down_max_age: float = 1.0,
        invalidation_url: str | None = None,
        invalidation_hold: float = 2.0,
        owner: str | None = None,
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ValidationError("a LayeredCache needs at least one layer", field="layers")
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValidationError(f"layer names must be unique, got {names}", field="layers")
        if not 0.0 <= verify_share <= 1.0:
            raise ValidationError(
                f"verify_share must be in 0..1, got {verify_share!r}", field="verify_share"
            )
        if not negative_ttl > 0 or not max_age > 0:
            raise ValidationError("negative_ttl and max_age must be positive", field="max_age")
        self.name = name
        self.layers = layers
        self.flags = flags
        self.guard = guard
        self.verify_share = verify_share
        self.negative_ttl = float(negative_ttl)
        self.remote_negatives = remote_negatives
        self.max_age = float(max_age)
        self.channel_down_max_age = float(channel_down_max_age)
        self.invalidation_hold = float(invalidation_hold)
        self._loader = loader
        self._async_loader = inspect.iscoroutinefunction(loader) or (
            inspect.iscoroutinefunction(getattr(loader, "__call__", None))  # noqa: B004
        )
        self._is_enabled = flags.is_enabled
        self._flag_keys = [f"{name}.{n}" for n in names]
        self._shadow_keys = [f"{k}.shadow" for k in self._flag_keys]
        for i, layer in enumerate(layers):
            validate_flag_key(self._shadow_keys[i], "name")
            for key, what in ((self._flag_keys[i], "serves"), (self._shadow_keys[i], "shadows")):
                declare(
                    key,
                    kind=FlagKind.OPERATIONAL,
                    owner=owner,
                    description=f"{what} cache layer {layer.name!r} of cache {name!r}",
                    module=__name__,
                )
        self._remote = [bool(getattr(layer, "remote", False)) for layer in layers]
        for i, layer in enumerate(layers):
            if self._remote[i]:
                layer.bind(name, max_age=self.max_age)  # type: ignore[attr-defined]
        self._index = {n: i for i, n in enumerate(names)}
        self._range = range(len(layers))
        self._memory = [layer for i, layer in enumerate(layers) if not self._remote[i]]
        first_remote = next((lay for i, lay in enumerate(layers) if self._remote[i]), None)

        self.metrics = CacheStats(name, names)
        self.metrics.channel_probe = weakref.WeakMethod(self._channel_is_up)
        self._stats: list[LayerStats] = [self.metrics.layers[n] for n in names]
        null = _NullWatch()
        self._watches: list[LayerWatch | _NullWatch] = [
            guard.watch(self._flag_keys[i], flags, self._breach_callback(i)) if guard else null
            for i in range(len(layers))
        ]

        # Flag-derived state, recomputed once per flag snapshot (see _refresh).
        self._state_lock = threading.RLock()
        self._fill_lock = threading.Lock()
        self._seen: object = object()
        self._live: list[bool | None] = [None] * len(layers)
        self._bypassed = [False] * len(layers)
        self._bypass_version = [0] * len(layers)
        self._dead: frozenset[str] = frozenset()
        self._layer_gen = 0
        self._fast = layers[0] if not self._remote[0] else None
        self._fast_get = self._fast.entries.get if self._fast is not None else None  # type: ignore[attr-defined]
        self._fast_flag = self._flag_keys[0]
        self._fast_shadow = self._shadow_keys[0]
        self._fast_stats = self._stats[0]
        self._fast_ok = self._fast is not None

        # Invalidation.
        self._gen = 0
        self._inval_floor = 0
        self._invalidated: dict[str, int] = {}
        self._channel_url = (
            invalidation_url
            or getattr(flags, "redis_url", None)
            or (first_remote.url if first_remote is not None else None)  # type: ignore[attr-defined]
        )
        prefix = first_remote.prefix if first_remote is not None else DEFAULT_PREFIX  # type: ignore[attr-defined]
        self.channel_name = f"{prefix}{name}:invalidate"
        self._channel: _Channel | InvalidationListener = (
            _NOT_LISTENING if self._channel_url else _NO_CHANNEL
        )
        self._down_after = 0.6
        self._publisher: redis.Redis | None = None
        self._publish_layer = next(
            (
                lay
                for i, lay in enumerate(layers)
                if self._remote[i] and getattr(lay, "url", None) == self._channel_url
            ),
            None,
        )

        self._flights: dict[str, _Flight] = {}
        self._aflights: dict[tuple[Any, ...], asyncio.Future[Any]] = {}
        # The last landed load per key: (landed at, gen, layer_gen, entry, filled). A
        # call that started before a load landed takes its answer instead of loading
        # again (its own layer reads may have been in flight while the load ran).
        self._landed: dict[str, tuple[float, int, int, Entry, frozenset[int]]] = {}
        self._verify_acc = 0.0
        self._reported: list[dict[str, int]] = [{} for _ in layers]
        self._tasks: set[asyncio.Task[Any]] = set()
        self._worker = _Worker(f"flagrail-cache:{name}")
        self._started = False

        ref = weakref.ref(self)

        def on_change(client: object, snapshot: Snapshot) -> None:
            cache = ref()
            if cache is not None:
                cache._refresh()

        self._unsubscribe = flags.on_change(on_change)
        weakref.finalize(self, self._unsubscribe)
        self._refresh()

    # ----------------------------------------------------------------- lifecycle
    def start(self, *, wait: float | None = None) -> LayeredCache:
        """Start the background worker and the invalidation listener.

        With ``wait`` (seconds), block until the channel is heard (best-effort).
        """
        if self._started:
            return self
        self._started = True
        self._worker.start()
        if callable(getattr(self.flags, "count", None)):
            self._worker.submit(self._report_counters, delay=COUNTER_REPORT_INTERVAL)
        if self._channel_url:
            listener = InvalidationListener(
                self._channel_url,
                self.channel_name,
                self._on_invalidated,
                on_connect=self._on_channel_connect,
                down_after=self._down_after,
            )
            self._channel = listener
            listener.start()
            if wait:
                listener.wait_until_up(wait)
        return self

    def close(self) -> None:
        """Stop background work, unregister from the flag client, close the layers."""
        self._started = False
        channel, self._channel = (
            self._channel,
            (_NOT_LISTENING if self._channel_url else _NO_CHANNEL),
        )
        if isinstance(channel, InvalidationListener):
            channel.close()
        self._worker.close()
        self._unsubscribe()
        for layer in self.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    def __enter__(self) -> LayeredCache:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def channel_up(self) -> bool:
        """True while this process hears the invalidation channel (or has none)."""
        return _mono() - self._channel.last_heard <= self._down_after

    def _channel_is_up(self) -> bool:
        return self.channel_up

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait for background jobs due now (verifications) to finish. For tests."""
        return self._worker.wait_idle(timeout)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Counters per layer name, plus ``"cache"`` (loads, invalidations)."""
        out: dict[str, dict[str, Any]] = {n: s.as_dict() for n, s in self.metrics.layers.items()}
        out["cache"] = {
            "loads": self.metrics.loads,
            "invalidations_ok": self.metrics.invalidations_ok,
            "invalidations_failed": self.metrics.invalidations_failed,
            "channel_up": self.channel_up,
            "background_dropped": self._worker.dropped,
        }
        return out

    def modes(self, tenant: str | None = None) -> dict[str, Mode]:
        """How each layer would take part in a call for ``tenant`` now."""
        self._sync()
        modes = self._modes(tenant, None)
        return {lay.name: Mode(m) for lay, m in zip(self.layers, modes, strict=True)}

    # ----------------------------------------------------------------- flag state
    def _sync(self) -> None:
        if self.flags.snapshot is not self._seen:
            self._refresh()

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
        with self._fill_lock:
            self._layer_gen += 1
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

    def _modes(self, tenant: str | None, first: int | None) -> tuple[int, ...]:
        """Each layer's mode for this call (``_OFF``/``_LIVE``/``_SHADOW``); the first
        layer's is ``first`` when the fast path already decided it."""
        mode = self._mode
        return tuple(
            first if i == 0 and first is not None else mode(i, tenant)
            for i in range(len(self.layers))
        )

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

    # ----------------------------------------------------------------- reads
    def _hit(self, key: str, tenant: str | None, t0: float) -> Any:
        """The fast path: a live memory hit in the first layer, or a ``_Miss``."""
        if self.flags.snapshot is not self._seen:
            self._refresh()
        if not self._fast_ok:
            if self._fast is None:
                return _MISS_NONE
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

    def get(self, key: str, tenant: str | None = None) -> Any:
        """The value for ``key`` (None: no such key), read through the layers live
        for ``tenant``. Raises only what the loader raises."""
        t0 = _perf()
        found = self._hit(key, tenant, t0)
        if found.__class__ is not _Miss:
            return found
        return self._resolve(key, tenant, found.mode, t0)

    def _resolve(self, key: str, tenant: str | None, first: int | None, started: float) -> Any:
        """Read the layers in order, each in its mode for ``tenant`` (decided when the
        call reaches it; the first layer's is ``first`` when not None), up to the first
        live answer; load on a miss; fill the layers that missed."""
        gen, layer_gen = self._gen, self._layer_gen
        shadows: list[tuple[int, Entry]] | None = None
        missed: list[int] = []
        answer: Entry | None = None
        served_by = -1
        for i in self._range:
            mode = first if i == 0 and first is not None else self._mode(i, tenant)
            if not mode:
                continue
            got = self._read(i, key)
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
        leader: _Flight | None = None
        if answer is None:
            answer, missed, leader = self._load(key, missed, started)
        elif not missed and shadows is None:
            if self.verify_share:
                self._maybe_verify(served_by, key, answer)
            return answer.value
        try:
            if shadows is not None:
                missed += self._wrong_shadows(key, shadows, answer)
            if missed:
                self._fill(key, missed, answer, gen, layer_gen)
            if served_by >= 0 and self.verify_share:
                self._maybe_verify(served_by, key, answer)
        finally:
            if leader is not None:
                self._land(key, leader)
        return answer.value

    def _wrong_shadows(
        self, key: str, shadows: list[tuple[int, Entry]], answer: Entry
    ) -> list[int]:
        """Judge each shadow layer's entry against ``answer``; the layers whose entry
        was wrong (and dropped), to store the right answer in instead."""
        return [i for i, entry in shadows if not self._judge(i, key, entry, answer, "shadow")]

    def _recall(
        self, key: str, started: float, missed: list[int]
    ) -> tuple[Entry, list[int], frozenset[int]] | None:
        """The answer of a load of ``key`` that landed after ``started`` (and after the
        last invalidation or layer change), with the layers it did not fill; else None."""
        landed = self._landed.get(key)
        if landed is None:
            return None
        at, gen, layer_gen, entry, filled = landed
        if at < started or gen != self._gen or layer_gen != self._layer_gen:
            return None
        return entry, [i for i in missed if i not in filled], filled

    def _remember(self, key: str, entry: Entry, filled: frozenset[int]) -> None:
        if len(self._landed) >= 4096:
            self._landed.clear()
        self._landed[key] = (_perf(), self._gen, self._layer_gen, entry, filled)

    def _load(
        self, key: str, missed: list[int], started: float
    ) -> tuple[Entry, list[int], _Flight | None]:
        """Call the loader once per key however many threads miss it together.

        The leader gets its flight back and must ``_land`` it after its fills; a
        follower waits for the leader's fills and is left only the layers the
        leader did not fill (its flags may differ). Raises the loader's error.
        """
        mine = _Flight()
        flight = self._flights.setdefault(key, mine)  # atomic: one leader per key
        if flight is not mine:
            flight.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value, [i for i in missed if i not in flight.filled], None
        recalled = self._recall(key, started, missed)
        if recalled is not None:
            # Followers that joined this flight take the recalled answer too.
            mine.value, mine.filled = recalled[0], recalled[2]
            if self._flights.get(key) is mine:
                del self._flights[key]
            mine.done.release()
            return recalled[0], recalled[1], None
        self.metrics.loads += 1
        try:
            value = self._loader(key)
        except BaseException as exc:
            mine.error = exc
            self._land(key, mine)
            raise
        mine.value = Entry(value, time.time(), value is None, None)
        mine.filled = frozenset(missed)
        return mine.value, missed, mine

    def _land(self, key: str, flight: _Flight) -> None:
        if flight.value is not None and flight.error is None:
            self._remember(key, flight.value, flight.filled)
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.release()

    def _read(self, i: int, key: str) -> Any:
        """Entry, None (miss, including a rejected entry) or ``_UNAVAILABLE``."""
        layer = self.layers[i]
        st = self._stats[i]
        if not self._remote[i]:
            return self._read_memory(i, layer, key)
        if not layer.available():  # type: ignore[attr-defined]
            return self._circuit_open(i)
        t0 = _perf()
        try:
            entry = layer.get(key)
        except CorruptEntryError as exc:
            self._rejected(i, exc)
            return None
        except Exception as exc:
            self._call_failed(i, exc)
            return _UNAVAILABLE
        finally:
            elapsed = _perf() - t0
            st.buckets[_bisect(LATENCY_BUCKETS, elapsed)] += 1
            st.latency_sum += elapsed
            st.latency_count += 1
        return self._answered(i, entry)

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

    def _call_failed(self, i: int, exc: Exception) -> None:
        """Count a failed call to remote layer ``i``. A ``CacheError`` is the layer
        saying so; anything else is a layer bug, logged, which must not fail the
        caller either: the read goes below, the write is skipped."""
        self._stats[i].errors += 1
        self._watches[i].call(failed=True)
        if not isinstance(exc, CacheError):
            log.warning("cache layer %s failed unexpectedly", self._flag_keys[i], exc_info=True)

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
        setattr(st, attr, getattr(st, attr) + 1)
        if reason.corrupt:
            log.warning("cache layer %s: corrupt entry rejected (%s)", self._flag_keys[i], exc)
        self._watches[i].read(corrupt=reason.corrupt)

    # ----------------------------------------------------------------- writes
    def _ttl(self, answer: Entry) -> float:
        if answer.negative:
            return self.negative_ttl
        return self.max_age - (time.time() - answer.written_at)

    def _fill(self, key: str, missed: list[int], answer: Entry, gen: int, layer_gen: int) -> None:
        ttl = self._fill_memory(key, missed, answer, gen, layer_gen)
        if ttl <= 0:
            return
        for i in missed:
            if self._remote[i] and self._may_write_remote(i, key, answer, gen):
                self._write(i, key, answer, ttl)

    def _fill_memory(
        self, key: str, missed: list[int], answer: Entry, gen: int, layer_gen: int
    ) -> float:
        """Store ``answer`` in the ``missed`` memory layers, unless ``key`` was
        invalidated or the layers changed since the read began. Returns the TTL the
        remote layers are to get; 0 or less: store nothing anywhere."""
        if not missed:
            return 0.0
        ttl = self._ttl(answer)
        if ttl <= 0:
            return ttl
        memory = [i for i in missed if not self._remote[i]]
        if memory:
            with self._fill_lock:
                if self._layer_gen == layer_gen and not self._invalidated_since(key, gen):
                    for i in memory:
                        if not self._bypassed[i]:
                            self.layers[i].set(key, answer, ttl)
        return ttl

    def _may_write_remote(self, i: int, key: str, answer: Entry, gen: int) -> bool:
        if answer.negative and not self.remote_negatives:
            return False
        if self._bypassed[i] or self._invalidated_since(key, gen):
            return False
        if not self.layers[i].available():  # type: ignore[attr-defined]
            self._stats[i].bypass_circuit += 1
            return False
        return True

    def _write(self, i: int, key: str, answer: Entry, ttl: float) -> None:
        try:
            stored = self.layers[i].set(key, answer, ttl)
        except CorruptEntryError as exc:
            if self._write_refused(i, key, exc):
                self._drop(i, key)
            return
        except Exception as exc:
            self._call_failed(i, exc)
            return
        self._wrote(i, stored)

    def _wrote(self, i: int, stored: bool | None) -> None:
        """Count a write to remote layer ``i`` that went through."""
        st = self._stats[i]
        if stored is not False:  # False: refused by a fresh invalidation's tombstone
            st.writes += 1
        if getattr(self.layers[i], "check_writes", False):
            st.verify_write += 1
        self._watches[i].call()

    def _write_refused(self, i: int, key: str, exc: CorruptEntryError) -> bool:
        """Count a write layer ``i`` refused as corrupt. True for a ``WRITE`` refusal: the
        layer's write path turns values into others, so what it holds of ``key`` is
        suspect too and must be dropped. A failed write check is reported to the guard
        as a failed verification (a passed one proves nothing about what the layer will
        serve, so it is counted but not reported)."""
        st = self._stats[i]
        if exc.field == Rejection.WRITE:
            st.verify_write += 1
            st.mismatch_write += 1
            log.warning("cache layer %s: write refused: %s", self._flag_keys[i], exc)
            self._watches[i].verified(False)
            return True
        st.corrupt_bookkeeping += 1
        log.warning("cache layer %s: %s", self._flag_keys[i], exc)
        self._watches[i].read(corrupt=True)
        return False

    # ----------------------------------------------------------------- counters
    def _layer_counters(self, i: int) -> dict[str, int]:
        """What rollout-plan guards read, per layer flag: ``reads`` (answered reads),
        ``hits``, ``corrupt_reads``, ``mismatches`` and ``errors`` (failed or skipped
        calls)."""
        st = self._stats[i]
        return {
            "reads": st.hits + st.misses,
            "hits": st.hits,
            "corrupt_reads": st.corrupt_format
            + st.corrupt_checksum
            + st.corrupt_payload
            + st.corrupt_bookkeeping,
            "mismatches": st.mismatch_verify + st.mismatch_shadow + st.mismatch_write,
            "errors": st.errors + st.bypass_circuit,
        }

    def _report_counters(self) -> None:
        """Add what changed since the last call to the flag client's counters
        (``FlagClient.count``), which its metrics reports carry to the server.
        Re-schedules itself while the cache runs."""
        try:
            count = self.flags.count  # type: ignore[attr-defined]
            for i, flag in enumerate(self._flag_keys):
                now = self._layer_counters(i)
                last = self._reported[i]
                for name, value in now.items():
                    delta = value - last.get(name, 0)
                    if delta > 0:
                        count(flag, name, delta)
                self._reported[i] = now
        finally:
            if self._started:
                self._worker.submit(self._report_counters, delay=COUNTER_REPORT_INTERVAL)

    # ----------------------------------------------------------------- verification
    def _maybe_verify(self, i: int, key: str, entry: Entry) -> None:
        if not self.verify_share:
            return
        acc = self._verify_acc + self.verify_share
        if acc >= 1.0:
            self._verify_acc = acc - 1.0
            self._schedule_verify(i, key, entry)
        else:
            self._verify_acc = acc

    def _schedule_verify(self, i: int, key: str, entry: Entry) -> None:
        gen = self._gen
        if self._async_loader:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                task = loop.create_task(self._averify(i, key, entry, gen))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
        self._worker.submit(self._verify, i, key, entry, gen)

    def _verify(self, i: int, key: str, entry: Entry, gen: int) -> None:
        try:
            value = self._loader(key)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
        except Exception:  # the loader failing is not a verdict on the cache
            log.debug("verification load of %r failed", key, exc_info=True)
            return
        self._verdict(i, key, entry, value, gen)

    async def _averify(self, i: int, key: str, entry: Entry, gen: int) -> None:
        try:
            value = await self._loader(key)  # type: ignore[misc]
        except Exception:  # the loader failing is not a verdict on the cache
            log.debug("verification load of %r failed", key, exc_info=True)
            return
        # The verdict may delete from Redis (blocking I/O): keep it off the event loop.
        await asyncio.to_thread(self._verdict, i, key, entry, value, gen)

    def _verdict(self, i: int, key: str, entry: Entry, value: Any, gen: int) -> None:
        """Judge a verification, unless ``key`` was invalidated since the hit: the
        source of truth then moved on (a revocation), and the hit was not wrong."""
        if self._invalidated_since(key, gen):
            return
        self._judge(i, key, entry, Entry(value, time.time(), value is None, None), "verify")

    def _same(self, a: Entry, b: Entry) -> bool:
        """Equal as values, judged by ``flags.cache.canonical.same``: never through a
        layer's serializer, so a broken write path cannot make a wrong value agree
        with the truth (a tuple from the loader still equals its JSON list)."""
        if a.negative or b.negative:
            return a.negative == b.negative
        return same(a.value, b.value)

    def _judge(self, i: int, key: str, entry: Entry, truth: Entry, check: str) -> bool:
        """Compare ``entry`` (served by, or shadowed in, layer ``i``) with ``truth``;
        count, report to the guard, and drop a wrong value. True when they agree."""
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
                self._note_invalidated(key)
            for memory in self._memory:  # copies of the wrong value, wherever they went
                memory.delete(key)
            self._drop(i, key)
            if blame != i:
                self._drop(blame, key)
        self._watches[blame].verified(match)
        return match

    def _drop(self, i: int, key: str) -> None:
        layer = self.layers[i]
        if not self._remote[i]:
            layer.delete(key)
            return
        if not layer.available():  # type: ignore[attr-defined]
            return
        try:
            layer.delete(key)
            self._watches[i].call()
        except CacheError:
            self._stats[i].errors += 1
            self._watches[i].call(failed=True)

    async def _adrop(self, i: int, key: str) -> None:
        """``_drop`` on the event loop: a remote delete through the layer's async twin."""
        layer = self.layers[i]
        adelete = getattr(layer, "adelete", None)
        if not self._remote[i] or adelete is None:
            self._drop(i, key)
            return
        if not layer.available():  # type: ignore[attr-defined]
            return
        try:
            await adelete(key)
            self._watches[i].call()
        except CacheError:
            self._stats[i].errors += 1
            self._watches[i].call(failed=True)

    # ----------------------------------------------------------------- async
    async def aget(self, key: str, tenant: str | None = None) -> Any:
        """``get`` for asyncio: redis.asyncio for remote layers; an async loader is
        awaited, a sync one runs in a thread. Same guarantees as ``get``."""
        t0 = _perf()
        found = self._hit(key, tenant, t0)
        if found.__class__ is not _Miss:
            return found
        return await self._aresolve(key, tenant, found.mode, t0)

    async def _aresolve(
        self, key: str, tenant: str | None, first: int | None, started: float
    ) -> Any:
        """``_resolve`` for asyncio."""
        gen, layer_gen = self._gen, self._layer_gen
        shadows: list[tuple[int, Entry]] | None = None
        missed: list[int] = []
        answer: Entry | None = None
        served_by = -1
        for i in self._range:
            mode = first if i == 0 and first is not None else self._mode(i, tenant)
            if not mode:
                continue
            got = await self._aread(i, key)
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
        future: asyncio.Future[Any] | None = None
        if answer is None:
            answer, missed, future = await self._aload(key, missed, started)
        filled = frozenset(missed)
        try:
            if shadows is not None:
                missed += self._wrong_shadows(key, shadows, answer)
            if missed:
                await self._afill(key, missed, answer, gen, layer_gen)
            if served_by >= 0 and self.verify_share:
                self._maybe_verify(served_by, key, answer)
        finally:
            if future is not None:
                self._aland(key, future, (answer, filled))
        return answer.value

    async def _aload(
        self, key: str, missed: list[int], started: float
    ) -> tuple[Entry, list[int], asyncio.Future[Any] | None]:
        """``_load`` for one event loop: one loader call per key however many tasks
        miss it together. The leader gets the future back and must ``_aland`` it."""
        loop = asyncio.get_running_loop()
        flight_key = (key, id(loop))
        while True:
            pending = self._aflights.get(flight_key)
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
        recalled = self._recall(key, started, missed)
        if recalled is not None:
            return recalled[0], recalled[1], None
        future: asyncio.Future[Any] = loop.create_future()
        self._aflights[flight_key] = future
        self.metrics.loads += 1
        try:
            if self._async_loader:
                value = await self._loader(key)  # type: ignore[misc]
            else:
                value = await asyncio.to_thread(self._loader, key)
                if inspect.isawaitable(value):  # a callable that returns a coroutine
                    value = await value
        except asyncio.CancelledError:
            self._aflights.pop(flight_key, None)
            future.cancel()
            raise
        except BaseException as exc:
            self._aflights.pop(flight_key, None)
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        return Entry(value, time.time(), value is None, None), missed, future

    def _aland(self, key: str, future: asyncio.Future[Any], result: object) -> None:
        flight_key = (key, id(future.get_loop()))
        entry, filled = result  # type: ignore[misc]
        self._remember(key, entry, filled)
        if self._aflights.get(flight_key) is future:
            del self._aflights[flight_key]
        if not future.done():
            future.set_result(result)

    async def _aread(self, i: int, key: str) -> Any:
        layer = self.layers[i]
        aget = getattr(layer, "aget", None)
        if not self._remote[i] or aget is None:
            return self._read(i, key)
        st = self._stats[i]
        if not layer.available():  # type: ignore[attr-defined]
            return self._circuit_open(i)
        t0 = _perf()
        try:
            entry = await aget(key)
        except CorruptEntryError as exc:
            self._rejected(i, exc)
            return None
        except Exception as exc:
            self._call_failed(i, exc)
            return _UNAVAILABLE
        finally:
            st.observe(_perf() - t0)
        return self._answered(i, entry)

    async def _afill(
        self, key: str, missed: list[int], answer: Entry, gen: int, layer_gen: int
    ) -> None:
        ttl = self._fill_memory(key, missed, answer, gen, layer_gen)
        if ttl <= 0:
            return
        for i in missed:
            if not self._remote[i] or not self._may_write_remote(i, key, answer, gen):
                continue
            aset = getattr(self.layers[i], "aset", None)
            if aset is None:
                self._write(i, key, answer, ttl)
                continue
            try:
                stored = await aset(key, answer, ttl)
            except CorruptEntryError as exc:
                if self._write_refused(i, key, exc):
                    await self._adrop(i, key)
                continue
            except Exception as exc:
                self._call_failed(i, exc)
                continue
            self._wrote(i, stored)

    # ----------------------------------------------------------------- invalidation
    def _note_invalidated(self, key: str | None) -> None:
        """Make in-flight resolutions of ``key`` (of every key, for None) skip their fills."""
        with self._fill_lock:
            self._gen += 1
            if key is None or len(self._invalidated) >= 4096:
                self._invalidated.clear()
                self._inval_floor = self._gen
            else:
                self._invalidated[key] = self._gen

    def _invalidated_since(self, key: str, gen: int) -> bool:
        return self._invalidated.get(key, self._inval_floor) > gen

    def invalidate(self, key: str) -> bool:
        """Remove ``key`` everywhere: this process's memory layers, every remote layer
        (whatever its flag), and every other process's memory layers via pub/sub.

        Returns True when every remote delete and the publish succeeded. On a
        failure it returns False and, if the cache is started, keeps retrying in
        the background for ``max_age`` seconds. Never raises.
        """
        self._note_invalidated(key)
        for memory in self._memory:
            memory.delete(key)
        ok = self._invalidate_remote(key)
        if ok:
            self.metrics.invalidations_ok += 1
        else:
            self.metrics.invalidations_failed += 1
            log.warning("invalidation of %r did not reach everything; retrying", key)
            self._worker.submit(self._retry_invalidate, key, _mono() + self.max_age, delay=0.2)
        self._worker.submit(self._redelete, key, delay=0.25)
        return ok

    def _invalidate_remote(self, key: str) -> bool:
        ok = True
        for i, layer in enumerate(self.layers):
            if not self._remote[i]:
                continue
            if not layer.available():  # type: ignore[attr-defined]
                ok = False
                continue
            try:
                invalidate = getattr(layer, "invalidate", None)
                if invalidate is not None:
                    invalidate(key, self.invalidation_hold)
                else:
                    layer.delete(key)
            except CacheError:
                self._stats[i].errors += 1
                ok = False
        if self._channel_url:
            ok = self._publish(encode_key(key)) and ok
        return ok

    def _publish(self, message: bytes) -> bool:
        layer = self._publish_layer
        try:
            if layer is not None:
                if not layer.available():  # type: ignore[attr-defined]
                    return False
                layer.publish(self.channel_name, message)  # type: ignore[attr-defined]
                return True
            return self._own_publish(message)
        except CacheError:
            return False

    def _own_publish(self, message: bytes) -> bool:
        if self._publisher is None:
            self._publisher = redis.Redis.from_url(
                str(self._channel_url),
                socket_timeout=0.05,
                socket_connect_timeout=0.05,
                retry=Retry(NoBackoff(), 0),
            )
        try:
            self._publisher.publish(self.channel_name, message)
        except (redis.RedisError, OSError):
            return False
        return True

    def _redelete(self, key: str) -> None:
        """Invalidate once more: drops a value a racing reader wrote back or copied."""
        self._note_invalidated(key)
        for memory in self._memory:
            memory.delete(key)
        self._invalidate_remote(key)

    def _retry_invalidate(self, key: str, deadline: float) -> None:
        if self._invalidate_remote(key):
            self.metrics.invalidations_ok += 1
            return
        if _mono() < deadline:
            self._worker.submit(self._retry_invalidate, key, deadline, delay=0.5)

    def _on_invalidated(self, key: str) -> None:
        self._note_invalidated(key)
        for memory in self._memory:
            memory.delete(key)

    def _on_channel_connect(self) -> None:
        """(Re)subscribed: whatever was published meanwhile is lost, so forget it all."""
        self._note_invalidated(None)
        for memory in self._memory:
            memory.clear()

    def __repr__(self) -> str:
        return f"LayeredCache({self.name!r}, layers={[lay.name for lay in self.layers]})"
