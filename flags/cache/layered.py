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

**Invalidation** (``flags.cache.invalidation``): ``invalidate(key)`` deletes the
key in every layer and every process within milliseconds, and holds off
writes of values loaded before it. While the channel is down, memory entries
older than ``channel_down_max_age`` (1 s) are not served. Positive entries
never outlive ``max_age`` seconds from the moment they left the loader.

**Single-flight** (``flags.cache.flight``): concurrent misses of one key in one
process share one loader call.

**Verification.** A ``verify_share`` of live hits is re-read from the loader
itself (never through single-flight or a layer) off the request path, and
compared with the served value as values (``flags.cache.canonical``), never
through a layer's serializer: a mismatch drops the entry and is counted (and
reported to the guard against the layer the value came from). Shadow layers are
judged the same way on every read. Remote layers also read every write back
before sending it (``RedisLayer.check_writes``).

**One core, two drivers.** Every decision of a read lives in ``flags.cache.core``
and does no I/O; ``get`` performs the requests it yields with blocking calls and
``aget`` awaits them (redis.asyncio, a sync loader in a thread), so the two
cannot drift and ``aget`` never blocks its event loop on Redis.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from flags.cache.codec import Entry
from flags.cache.core import (
    NO_CHANNEL,
    NOT_LISTENING,
    Channel,
    Miss,
    Mode,
    NullWatch,
)
from flags.cache.drivers import AsyncioDriver, BlockingDriver
from flags.cache.flight import AsyncFlights, Flights, Landed
from flags.cache.guard import Guard, LayerWatch
from flags.cache.invalidation import Generations, InvalidationListener, Invalidator
from flags.cache.metrics import CacheStats, LayerStats
from flags.cache.redis import DEFAULT_PREFIX
from flags.cache.worker import Worker
from flags.declarations import declare
from flags.errors import ValidationError
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


class LayeredCache(BlockingDriver, AsyncioDriver):
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
        self.verify_share = float(verify_share)
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
        first_remote: Any = next((lay for i, lay in enumerate(layers) if self._remote[i]), None)

        self.metrics = CacheStats(name, names)
        self.metrics.channel_probe = weakref.WeakMethod(self._channel_is_up)
        self._stats: list[LayerStats] = [self.metrics.layers[n] for n in names]
        null = NullWatch()
        self._watches: list[LayerWatch | NullWatch] = [
            guard.watch(self._flag_keys[i], flags, self._breach_callback(i)) if guard else null
            for i in range(len(layers))
        ]

        # Flag-derived state, recomputed once per flag snapshot (see _refresh).
        self._state_lock = threading.RLock()
        self._seen: object = object()
        self._live: list[bool | None] = [None] * len(layers)
        self._bypassed = [False] * len(layers)
        self._bypass_version = [0] * len(layers)
        self._dead: frozenset[str] = frozenset()
        self._fast = layers[0] if not self._remote[0] else None
        self._fast_get = self._fast.entries.get if self._fast is not None else None  # type: ignore[attr-defined]
        self._fast_flag = self._flag_keys[0]
        self._fast_shadow = self._shadow_keys[0]
        self._fast_stats = self._stats[0]
        self._fast_ok = self._fast is not None

        # Invalidation, single-flight, background work.
        self._gens = Generations(threading.Lock())
        self._channel_url = (
            invalidation_url
            or getattr(flags, "redis_url", None)
            or (first_remote.url if first_remote is not None else None)
        )
        prefix = first_remote.prefix if first_remote is not None else DEFAULT_PREFIX
        self.channel_name = f"{prefix}{name}:invalidate"
        self._channel: Channel | InvalidationListener = (
            NOT_LISTENING if self._channel_url else NO_CHANNEL
        )
        self._down_after = 0.6
        self._worker = Worker(f"flagrail-cache:{name}")
        self._invalidator = Invalidator(
            layers=layers,
            remote=self._remote,
            stats=self._stats,
            generations=self._gens,
            worker=self._worker,
            metrics=self.metrics,
            channel_url=self._channel_url,
            channel=self.channel_name,
            hold=self.invalidation_hold,
            max_age=self.max_age,
        )
        landed = Landed(self._gens)
        self._flights = Flights(landed, self.metrics)
        if not self._async_loader:  # the blocking driver calls it as it is
            self._blocking_loader = loader  # type: ignore[method-assign,assignment]
        self._aflights = AsyncFlights(landed)
        self._verify_acc = 0.0
        # Verifications queued or running, by (layer, key, written_at): a hot key's hits
        # of one entry share one loader re-read while it is pending, so a burst of reads
        # never buries the verifier under copies of the same question (and a wrong entry
        # among them waits behind fewer).
        self._verifying: set[tuple[int, str, float]] = set()
        self._reported: list[dict[str, int]] = [{} for _ in layers]
        self._tasks: set[asyncio.Task[Any]] = set()
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
                self._invalidator.forget,
                on_connect=self._invalidator.forget_all,
                down_after=self._down_after,
            )
            self._channel = listener
            listener.start()
            if wait:
                listener.wait_until_up(wait)
        return self

    def set_verify_share(self, share: float) -> None:
        """Change the share of live hits re-read from the loader, in 0..1
        (``flags.cache.tuning`` binds it to a number flag); read by the next hit.
        Raises ``ValidationError`` for a share outside 0..1."""
        if type(share) not in (int, float) or not 0.0 <= share <= 1.0:
            raise ValidationError(
                f"verify_share must be in 0..1, got {share!r}", field="verify_share"
            )
        self.verify_share = float(share)

    def close(self) -> None:
        """Stop background work, unregister from the flag client, close the layers."""
        self._started = False
        channel, self._channel = (
            self._channel,
            (NOT_LISTENING if self._channel_url else NO_CHANNEL),
        )
        if isinstance(channel, InvalidationListener):
            channel.close()
        self._worker.close()
        self._unsubscribe()
        for layer in self.layers:
            close = getattr(layer, "close", None)
            if close is not None:
                close()
        self._invalidator.close()

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
        if self.flags.snapshot is not self._seen:
            self._refresh()
        return {lay.name: Mode(self._mode(i, tenant)) for i, lay in enumerate(self.layers)}

    # ----------------------------------------------------------------- the sync driver
    def get(self, key: str, tenant: str | None = None) -> Any:
        """The value for ``key`` (None: no such key), read through the layers live
        for ``tenant``. Raises only what the loader raises."""
        t0 = _perf()
        found = self._hit(key, tenant, t0)
        if found.__class__ is not Miss:
            return found
        plan = self._plan(tenant, found.mode)
        if plan is None:
            return self._load_only(key, t0).value
        return self._run(self._resolve(key, plan, t0)).value

    # ----------------------------------------------------------------- the async driver
    async def aget(self, key: str, tenant: str | None = None) -> Any:
        """``get`` for asyncio: redis.asyncio for remote layers; an async loader is
        awaited, a sync one (and a remote layer without async twins) runs in a
        thread, so the event loop never blocks on I/O. Same guarantees as ``get``."""
        t0 = _perf()
        found = self._hit(key, tenant, t0)
        if found.__class__ is not Miss:
            return found
        plan = self._plan(tenant, found.mode)
        if plan is None:
            return (await self._aload_only(key, t0)).value
        return (await self._arun(self._resolve(key, plan, t0))).value

    # ----------------------------------------------------------------- verification
    def _schedule_verify(self, i: int, key: str, entry: Entry) -> None:
        """Verify off the request path: on the event loop for an async loader called
        from ``aget``, else on the background worker."""
        ident = (i, key, entry.written_at)
        if ident in self._verifying:
            return  # the same entry is being re-read already
        self._verifying.add(ident)
        gen = self._gens.gen
        if self._async_loader:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                task = loop.create_task(self._averify(i, key, entry, gen))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(lambda _t: self._verifying.discard(ident))
                return
        if not self._worker.submit(self._verify_once, ident, entry, gen):
            self._verifying.discard(ident)  # dropped (stopped, or its queue full)

    def _verify_once(self, ident: tuple[int, str, float], entry: Entry, gen: int) -> None:
        try:
            self._verify(ident[0], ident[1], entry, gen)
        finally:
            self._verifying.discard(ident)

    # ----------------------------------------------------------------- counters
    def _report_counters(self) -> None:
        """Add what changed since the last call to the flag client's counters
        (``FlagClient.count``), which its metrics reports carry to the server.
        Re-schedules itself while the cache runs."""
        try:
            count = self.flags.count  # type: ignore[attr-defined]
            for i, flag in enumerate(self._flag_keys):
                now = self._stats[i].counters()
                last = self._reported[i]
                for name, value in now.items():
                    delta = value - last.get(name, 0)
                    if delta > 0:
                        count(flag, name, delta)
                self._reported[i] = now
        finally:
            if self._started:
                self._worker.submit(self._report_counters, delay=COUNTER_REPORT_INTERVAL)

    # ----------------------------------------------------------------- invalidation
    def invalidate(self, key: str) -> bool:
        """Remove ``key`` everywhere: this process's memory layers, every remote layer
        (whatever its flag), and every other process's memory layers via pub/sub.

        Returns True when every remote delete and the publish succeeded. On a
        failure it returns False and, if the cache is started, keeps retrying in
        the background for ``max_age`` seconds. Never raises.
        """
        return self._invalidator.invalidate(key)

    def __repr__(self) -> str:
        return f"LayeredCache({self.name!r}, layers={[lay.name for lay in self.layers]})"
