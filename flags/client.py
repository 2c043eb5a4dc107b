"""FlagClient: the in-process SDK.

Checks (``is_enabled``, ``evaluate``, and for typed flags ``value`` and ``variant``)
are ``flags.compiled.CompiledChecks``: they
read an immutable compiled snapshot that the client's source swaps in whole;
they never raise, never do I/O and never take a lock. With no snapshot at all
they answer the caller's default with reason ``default``.

Where snapshots come from is a ``flags.sync.SnapshotSource``, to which the
client is a ``flags.sync.SnapshotSink``:

* built with a server ``url``: a ``flags.sync.server.ServerSource`` (Redis,
  SSE and ETag polling of the flagrail server, a backup on disk, instance and
  metrics reports), started by the constructor (threads only);
* built with ``source=``: that source, started by ``start()`` (or ``with``);
  ``from_unleash`` gives one fed by an Unleash server;
* neither (``from_snapshot``, ``from_file``, tests): no sync at all.

``close()`` (or leaving the ``with`` block) stops the source. A change is
applied only at the next environment version; a gap or an unreadable message
makes the client ask its source for the whole snapshot (counted in
``stats()["resyncs"]``, logged once). After ``os.fork()`` (pre-fork servers)
the child restarts a source of its own under a new instance id.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flags.compiled import CompiledChecks, CompiledFlag, CompiledSnapshot, compile_snapshot
from flags.counts import EvaluationCounts, evaluation_counts, retire
from flags.errors import ValidationError
from flags.model import Evaluation, FlagChanged, FlagState, Snapshot
from flags.sync import DEFAULT_PREFIX, SnapshotSource

__all__ = ["FlagClient", "evaluation_counts", "get_default_client", "set_default_client"]

log = logging.getLogger("flagrail.client")

_EMPTY: Mapping[str, CompiledFlag] = {}

ChangeCallback = Callable[["FlagClient", Snapshot], None]

# Where a snapshot came from, as stats()["source"] reports it (besides the live
# channels "redis" and "stream", and "unleash"). A snapshot of one of these did
# not come from a source: a source's first snapshot replaces it whatever its
# version, and it is never reported as applied.
_NOT_FROM_SOURCE = ("backup", "none", "snapshot")
MAX_COUNTER_NAME = 100

# Clients whose source must restart in a forked child.
_syncing: weakref.WeakSet[FlagClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_syncing):
        try:
            client._restart_after_fork()
        except Exception:  # never break the child's start-up over flag sync
            log.exception("restarting flag sync after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class FlagClient(CompiledChecks):
    """Evaluate flags of one environment in process.

    Thread-safe: checks read one attribute holding an immutable compiled
    snapshot; updates build a new one and swap it in. Safe to call from asyncio
    code: no check blocks. ``close()`` blocks for at most a few seconds (a last
    report); from async code run it with ``asyncio.to_thread``.
    """

    def __init__(
        self,
        url: str | None,
        token: str | None,
        environment: str,
        *,
        source: SnapshotSource | None = None,
        redis_url: str | None = None,
        backup_path: str | Path | None = None,
        poll_interval: float = 5.0,
        metrics_interval: float = 10.0,
        app_name: str | None = None,
        channel_prefix: str = DEFAULT_PREFIX,
    ) -> None:
        """Configure the client; no I/O here.

        With ``url`` (a flagrail server; ``token`` its client token), the
        constructor starts a ``ServerSource`` right away: daemon threads
        ``flagrail-poll`` and ``flagrail-report``, the SSE consumer's thread, and
        with ``redis_url`` a Redis subscriber thread. Those threads open the HTTP
        and Redis connections; the constructor itself opens none and never
        blocks, so a client may be built in a request handler or at import of
        an app module. ``redis_url``, ``backup_path``, ``poll_interval``,
        ``metrics_interval``, ``app_name`` and ``channel_prefix`` (the Redis
        channels' prefix, the server's ``FLAGRAIL_REDIS_PREFIX``) configure it.

        With ``source`` instead, nothing starts until ``start()``, which starts
        that source (see its own docstring for what it opens and whether it
        blocks). With neither, the client never syncs (load snapshots yourself).

        ``redis_url`` takes every form of ``flags.redis_url`` (one server,
        ``redis+sentinel://`` following failovers, ``redis+cluster://``).

        Raises ``ValidationError`` (field ``source``) when both ``url`` and
        ``source`` are given, and ``InvalidRedisUrlError`` (a ``ValidationError``,
        field ``redis_url``) for a malformed ``redis_url``.
        """
        if url and source is not None:
            raise ValidationError("give a server url or a source, not both", field="source")
        if redis_url:
            # Imported here: ``import flags`` stays free of redis unless it is used.
            from flags.redis_url import parse_redis_url

            parse_redis_url(redis_url)  # any form: redis://, redis+sentinel://, ...
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.environment = environment
        self.redis_url = redis_url
        self.backup_path = Path(backup_path) if backup_path else None
        self.poll_interval = max(0.05, float(poll_interval))
        self.metrics_interval = max(0.05, float(metrics_interval))
        self.app_name = app_name
        self.channel_prefix = channel_prefix
        self.instance_id = uuid.uuid4().hex
        # CompiledChecks state: the table a check reads, counters and errors.
        self._table: Mapping[str, CompiledFlag] = _EMPTY
        self._loaded = False
        self._counts = EvaluationCounts()
        self._errors = 0
        self._finalizer = weakref.finalize(self, retire, self._counts)
        # {flag: {name: [amount]}}: app-named counters (count()); grown, never shrunk.
        self._app_counts: dict[str, dict[str, list[float]]] = {}
        self._compiled: CompiledSnapshot | None = None
        self._origin = "none"
        self._last_update_at: float | None = None
        self._resyncs = 0
        self._resync_logged = False
        self._callbacks: list[ChangeCallback] = []
        self._update_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False
        self._running = False
        if self.url is not None:
            # Imported here: ``import flags`` stays free of httpx until a client syncs.
            from flags.sync.server import ServerOptions, ServerSource

            source = ServerSource(
                ServerOptions(
                    url=self.url,
                    token=token,
                    environment=environment,
                    redis_url=redis_url,
                    backup_path=self.backup_path,
                    poll_interval=self.poll_interval,
                    metrics_interval=self.metrics_interval,
                    app_name=app_name,
                    channel_prefix=channel_prefix,
                )
            )
        self._source = source
        if self.url is not None:
            self.start()

    # ----------------------------------------------------------------- offline
    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any] | Snapshot) -> FlagClient:
        """A client serving a fixed snapshot (the body of ``/sdk/v1/snapshot``); no sync.

        Raises ``flags.errors.ValidationError`` if ``data`` is not a valid snapshot.
        """
        snapshot = data if isinstance(data, Snapshot) else Snapshot.from_dict(data)
        client = cls(None, None, snapshot.environment)
        client.load_snapshot(snapshot, source="snapshot")
        return client

    @classmethod
    def from_file(cls, path: str | Path) -> FlagClient:
        """``from_snapshot`` on the JSON in ``path``. Raises ``OSError`` or ``ValidationError``."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_snapshot(json.load(fh))

    @classmethod
    def from_unleash(
        cls, url: str, token: str, app_name: str, environment: str = "default", **options: Any
    ) -> FlagClient:
        """A started client fed by an Unleash server (``url`` ends in ``/api``) through
        UnleashClient; ``options`` are ``flags.unleash.source.UnleashSource``'s.

        Blocks while it registers and fetches once (see ``UnleashSource.start``).
        Raises ``ValidationError`` naming a bad argument.
        """
        # Imported here: UnleashClient is an optional dependency.
        from flags.unleash.source import UnleashSource

        source = UnleashSource(url, token, app_name, environment=environment, **options)
        client = cls(None, None, environment, source=source, app_name=app_name)
        return client.start()

    # ----------------------------------------------------------------- reads
    def state(self, key: str) -> FlagState | None:
        """The current state of ``key``, or None if this client does not know it."""
        c = self._table.get(key)
        return c.state if c is not None else None

    def flag_keys(self) -> list[str]:
        return sorted(self._table)

    def count(self, flag_key: str, name: str, n: float = 1) -> None:
        """Add ``n`` to the app-named counter ``name`` of ``flag_key`` (e.g.
        ``count("auth.cache.l2", "corrupt_reads")``); sent with the next metrics report
        and summed by ``TelemetryStore.counter_totals``. Never raises, never blocks:
        a bad argument is dropped and counted in ``stats()["errors"]``. Increments
        from many threads at once may rarely lose one (no lock on this path).
        """
        try:
            named = self._app_counts.get(flag_key)
            if named is None:
                if type(flag_key) is not str or not 0 < len(flag_key) <= 100:
                    self._errors += 1
                    return
                named = self._app_counts.setdefault(flag_key, {})
            slot = named.get(name)
            if slot is None:
                if type(name) is not str or not 0 < len(name) <= MAX_COUNTER_NAME:
                    self._errors += 1
                    return
                slot = named.setdefault(name, [0.0])
            if type(n) not in (int, float) or n != n or n in (float("inf"), float("-inf")):
                self._errors += 1
                return
            slot[0] += n
        except Exception:  # a counter must never take the caller down
            self._errors += 1

    # ----------------------------------------------------------------- updates
    def load_snapshot(self, snapshot: Snapshot, *, source: str) -> None:
        """Swap in a whole snapshot and notify ``on_change`` callbacks.

        ``source`` is what ``stats()["source"]`` reports. Thread-safe.
        """
        with self._update_lock:
            self._install(compile_snapshot(snapshot, self._counts), source)
        self._notify(snapshot)

    def apply_change(
        self, version: int, flag: str, state: FlagState | None, *, source: str
    ) -> bool:
        """Apply one change event at environment ``version``.

        Returns False (and changes nothing) when ``version`` is not the next one:
        the caller must resync from a full snapshot. ``state`` None removes the flag.
        Only the changed flag is recompiled.
        """
        with self._update_lock:
            current = self._compiled
            if current is None or version != current.version + 1:
                return False
            compiled = current.with_change(version, flag, state, self._counts)
            self._install(compiled, source)
        self._notify(compiled.snapshot)
        return True

    def _install(self, compiled: CompiledSnapshot, origin: str) -> None:
        """Under the update lock: make ``compiled`` what checks read."""
        self._compiled = compiled
        self._table = compiled.table
        self._loaded = True
        self._origin = origin
        self._last_update_at = time.time()
        self._ready.set()
        if self._source is not None:
            self._source.applied()

    def _notify(self, snapshot: Snapshot) -> None:
        for callback in list(self._callbacks):
            try:
                callback(self, snapshot)
            except Exception:  # user code: log it, keep the other callbacks running
                log.exception("on_change callback %r failed", callback)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(client, snapshot)`` after every applied update (on the
        source's thread). Returns a function that unregisters it."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    # ----------------------------------------------------------------- SnapshotSink
    def receive_snapshot(self, snapshot: Snapshot, source: str) -> None:
        """Sync path: install ``snapshot`` unless it is older than what is applied
        (a late answer racing a newer change). A snapshot replaces a backup whatever
        its version. Never raises."""
        if snapshot.environment != self.environment:
            self.request_resync(f"snapshot of {snapshot.environment!r}, not {self.environment!r}")
            return
        with self._update_lock:
            current = self._compiled
            if current is not None and self._origin not in _NOT_FROM_SOURCE:
                if snapshot.version < current.version:
                    return
                if snapshot.version == current.version:
                    self._origin = source
                    self._ready.set()
                    return
            self._install(compile_snapshot(snapshot, self._counts), source)
        self._notify(snapshot)

    def receive_change(self, event: FlagChanged, source: str) -> None:
        """Sync path: apply ``event`` if it is the next version, ignore it if it is
        old, resync on a gap. Never raises."""
        if event.environment != self.environment:
            return
        with self._update_lock:
            current = self._compiled
            if current is None or self._origin in _NOT_FROM_SOURCE:
                gap = True
            elif event.version <= current.version:
                return
            else:
                gap = event.version != current.version + 1
            if not gap:
                assert current is not None
                compiled = current.with_change(event.version, event.flag, event.state, self._counts)
                self._install(compiled, source)
        if gap:
            have = current.version if current is not None else None
            self.request_resync(f"version gap: have {have}, got {event.version}")
            return
        self._notify(compiled.snapshot)

    def receive_backup(self, snapshot: Snapshot) -> bool:
        """Serve ``snapshot`` (read from a backup) unless something was applied
        meanwhile; True if installed. Never raises."""
        with self._update_lock:
            if self._ready.is_set():
                return False
            self._install(compile_snapshot(snapshot, self._counts), "backup")
        self._notify(snapshot)
        return True

    def confirm(self, source: str) -> None:
        """The applied snapshot is still current, as ``source`` says (a 304)."""
        with self._update_lock:
            if self._compiled is not None and self._origin not in _NOT_FROM_SOURCE:
                self._origin = source

    def served(self) -> Snapshot | None:
        """The applied snapshot if a source delivered it (not a backup or an offline one)."""
        compiled = self._compiled
        if compiled is None or self._origin in _NOT_FROM_SOURCE:
            return None
        return compiled.snapshot

    def _foreign(self, key: str, tenant: object, default: bool) -> Evaluation | None:
        """A flag not in the snapshot: the source may know it in a shape of its own."""
        source = self._source
        return source.evaluate_foreign(key, tenant, default) if source is not None else None

    def request_resync(self, why: str) -> None:
        """Ask the source for the whole snapshot soon. Counted; logged once."""
        self._resyncs += 1
        if not self._resync_logged:
            self._resync_logged = True
            log.warning("flagrail %s: resyncing from a full snapshot (%s)", self.environment, why)
        else:
            log.debug("flagrail %s: resync (%s)", self.environment, why)
        source = self._source
        if source is not None and self._running:
            source.resync()

    # ----------------------------------------------------------------- status
    @property
    def version(self) -> int:
        """The environment version of the applied snapshot (0 before the first)."""
        return self._compiled.version if self._compiled else 0

    @property
    def snapshot(self) -> Snapshot | None:
        return self._compiled.snapshot if self._compiled else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Block until a first snapshot (server, Redis or backup) is applied; True if so.

        Blocks the calling thread: not for an event loop (use ``asyncio.to_thread``).
        """
        return self._ready.wait(timeout)

    def stats(self) -> dict[str, Any]:
        """``source`` (``redis`` or ``stream`` while one is live, else where the served
        snapshot came from: ``poll``, ``backup``, ``snapshot``, ``unleash``, ``none``,
        or the ``source`` given to ``load_snapshot``), ``version``,
        ``last_update_at`` (epoch seconds of the last applied update), ``errors`` (bad
        arguments), ``resyncs``, ``flags``, ``live``, ``instance_id``."""
        source = self._source
        live = source.live() if source is not None and self._running else None
        return {
            "source": live or self._origin,
            "environment": self.environment,
            "version": self.version,
            "last_update_at": self._last_update_at,
            "flags": len(self._table),
            "errors": self._errors,
            "resyncs": self._resyncs,
            "live": live is not None,
            "instance_id": self.instance_id,
        }

    def counts(self) -> dict[str, tuple[int, int]]:
        """This client's ``{flag key: (off, on)}`` evaluation counts since creation."""
        return {k: (v[0], v[1]) for k, v in list(self._counts.items()) if v[0] or v[1]}

    def counters(self) -> dict[str, dict[str, float]]:
        """This client's app-named counters (``count``) since creation."""
        return {
            flag: {name: slot[0] for name, slot in list(named.items())}
            for flag, named in list(self._app_counts.items())
        }

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> FlagClient:
        """Start the source (see the constructor). Idempotent; a no-op for a client
        without a source or one already closed. Returns the client.

        Raises what the source's ``start`` raises (then nothing runs and a later
        ``start()`` tries again).
        """
        with self._start_lock:
            source = self._source
            if source is None or self._closed or self._running:
                return self
            source.start(self)
            self._running = True
            _syncing.add(self)
        return self

    def close(self) -> None:
        """Stop the source (a ``ServerSource`` sends a last metrics and instance
        report and writes the backup). Checks keep answering from the last
        snapshot. Idempotent. Blocks for at most a few seconds."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            running, self._running = self._running, False
            _syncing.discard(self)
        if running and self._source is not None:
            self._source.close()

    def _restart_after_fork(self) -> None:
        """In a forked child: fresh locks, a new instance id, and a source of its own.
        Evaluations inherited from the parent are not reported again."""
        self._update_lock = threading.Lock()
        self._start_lock = threading.Lock()
        ready = self._ready.is_set()
        self._ready = threading.Event()
        if ready:
            self._ready.set()
        self.instance_id = uuid.uuid4().hex
        source, self._running = self._source, False
        _syncing.discard(self)
        self._source = source.after_fork() if source is not None else None
        if not self._closed:
            self.start()

    def __enter__(self) -> FlagClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_default_client: FlagClient | None = None


def get_default_client() -> FlagClient | None:
    """The process's default client (set by the application or by the test plugin)."""
    return _default_client


def set_default_client(client: FlagClient | None) -> FlagClient | None:
    """Make ``client`` the process's default; returns the previous one."""
    global _default_client
    previous, _default_client = _default_client, client
    return previous
