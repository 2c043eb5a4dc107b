"""FlagClient: the in-process SDK.

Checks (``is_enabled``, ``evaluate``) read an immutable compiled snapshot that a
background sync swaps in whole; they never raise, never do I/O and never take a
lock. With no snapshot at all they answer the caller's default with reason
``default``.

Lifecycle: a client built with a server ``url`` starts its background sync in
the constructor (threads only: the constructor itself does no I/O, so building
one in a request handler or at import of an app module never blocks). ``close()``
(or leaving the ``with`` block) stops it, sends a last metrics report and
writes the backup. ``start()`` is idempotent. A client without ``url``
(``from_snapshot``, ``from_file``, tests) never syncs.

Sync, in order of preference: the Redis channel ``flagrail:changes:<env>`` when
``redis_url`` is given and Redis answers; else the SSE stream
``/sdk/v1/stream``; ETag polling of ``/sdk/v1/snapshot`` every
``poll_interval`` seconds whenever neither is live (and every 30 s as a safety
net while one is). A change is applied only at the next environment version;
a gap or an unreadable message makes the client refetch the whole snapshot
(counted in ``stats()["resyncs"]``, logged once). Every applied snapshot is
written atomically to ``backup_path``; at start, while the server cannot be
reached, the backup is served. After ``os.fork()`` (pre-fork servers) the child
restarts its own sync with a new instance id.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mmh3

from flags.compiled import CompiledFlag, CompiledSnapshot, compile_snapshot
from flags.model import Evaluation, FlagChanged, FlagState, Reason, Snapshot

__all__ = ["FlagClient", "evaluation_counts", "get_default_client", "set_default_client"]

log = logging.getLogger("flagrail.client")

_hash = mmh3.hash
_EMPTY: Mapping[str, CompiledFlag] = {}
_MISSING = {True: Evaluation(True, Reason.MISSING), False: Evaluation(False, Reason.MISSING)}
_NO_STATE = {True: Evaluation(True, Reason.DEFAULT), False: Evaluation(False, Reason.DEFAULT)}
_ERROR = {
    True: Evaluation(True, Reason.ERROR, 0, "bad argument"),
    False: Evaluation(False, Reason.ERROR, 0, "bad argument"),
}

ChangeCallback = Callable[["FlagClient", Snapshot], None]

# Sources as stats()["source"] reports them.
SOURCES = ("redis", "stream", "poll", "backup", "snapshot", "none")
# Seconds between safety polls while Redis or the stream is live.
SAFETY_POLL = 30.0
MAX_COUNTER_NAME = 100

# Evaluation counts of clients already closed or collected, kept for process-wide
# reports (the pytest plugin's --flag-coverage). Guarded by _retired_lock.
_live_counts: weakref.WeakSet[_Counts] = weakref.WeakSet()
_retired_counts: dict[str, list[int]] = {}
_retired_lock = threading.Lock()
# Clients whose sync must restart in a forked child.
_syncing: weakref.WeakSet[FlagClient] = weakref.WeakSet()


class _Counts(dict[str, list[int]]):
    """Per-flag ``[off, on]`` evaluation counters of one client (weak-referenceable)."""

    __slots__ = ("__weakref__",)
    __hash__ = object.__hash__  # identity, so live counters can sit in a WeakSet
    __eq__ = object.__eq__


def _retire(counts: _Counts) -> None:
    with _retired_lock:
        for key, (off, on) in list(counts.items()):
            slot = _retired_counts.setdefault(key, [0, 0])
            slot[0] += off
            slot[1] += on
        counts.clear()


def evaluation_counts() -> dict[str, tuple[int, int]]:
    """Process-wide ``{flag key: (off, on)}`` over every FlagClient, live or closed.

    Counts are approximate under heavy multi-threaded use (increments are not atomic).
    """
    with _retired_lock:
        total = {k: [off, on] for k, (off, on) in _retired_counts.items()}
        live = list(_live_counts)
    for counts in live:
        for key, (off, on) in list(counts.items()):
            slot = total.setdefault(key, [0, 0])
            slot[0] += off
            slot[1] += on
    return {k: (v[0], v[1]) for k, v in total.items() if v[0] or v[1]}


def _after_fork_in_child() -> None:
    for client in list(_syncing):
        try:
            client._restart_after_fork()
        except Exception:  # never break the child's start-up over flag sync
            log.exception("restarting flag sync after fork failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class FlagClient:
    """Evaluate flags of one environment in process.

    Thread-safe: checks read one attribute holding an immutable compiled
    snapshot; updates build a new one and swap it in. Safe to call from asyncio
    code: no check blocks. ``close()`` blocks for at most a few seconds (a last
    report); from async code run it with ``asyncio.to_thread``.

    ``channel_prefix`` names the Redis channels (default ``flagrail:``, the
    server's ``FLAGRAIL_REDIS_PREFIX``).
    """

    def __init__(
        self,
        url: str | None,
        token: str | None,
        environment: str,
        *,
        redis_url: str | None = None,
        backup_path: str | Path | None = None,
        poll_interval: float = 5.0,
        metrics_interval: float = 10.0,
        app_name: str | None = None,
        channel_prefix: str = "flagrail:",
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.environment = environment
        self.redis_url = redis_url
        self.backup_path = Path(backup_path) if backup_path else None
        self.poll_interval = max(0.05, float(poll_interval))
        self.metrics_interval = max(0.05, float(metrics_interval))
        self.app_name = app_name
        self.channel_prefix = channel_prefix
        self.host = socket.gethostname()
        self.instance_id = uuid.uuid4().hex
        self._counts = _Counts()
        _live_counts.add(self._counts)
        self._finalizer = weakref.finalize(self, _retire, self._counts)
        # {flag: {name: [amount]}}: app-named counters (count()); grown, never shrunk.
        self._app_counts: dict[str, dict[str, list[float]]] = {}
        self._compiled: CompiledSnapshot | None = None
        self._table: Mapping[str, CompiledFlag] = _EMPTY
        self._source = "none"
        self._last_update_at: float | None = None
        self._errors = 0
        self._resyncs = 0
        self._resync_logged = False
        self._callbacks: list[ChangeCallback] = []
        self._update_lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False
        self._sync: _Sync | None = None
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
        """A started client backed by an Unleash server (``url`` ends in ``/api``) through
        UnleashClient; see ``flags.unleash.client.UnleashFlagClient`` for ``options``."""
        from flags.unleash.client import UnleashFlagClient

        return UnleashFlagClient(url, token, app_name, environment=environment, **options).start()

    # ----------------------------------------------------------------- checks
    def is_enabled(self, key: str, tenant: str | None = None, default: bool = False) -> bool:
        """True when ``key`` is on for ``tenant``. Never raises; bad arguments give ``default``."""
        try:
            c = self._table.get(key)
            if c is None:
                if self._compiled is None or type(key) is not str:
                    self._errors += type(key) is not str
                    return default is True
                slot = self._counts.get(key)
                if slot is None:
                    slot = self._counts[key] = [0, 0]
                slot[default is True] += 1
                return default is True
            r = c.fixed
            if r is None:
                if tenant is None:
                    r = c.no_tenant
                elif (
                    tenant.__class__ is not str
                    or not 0 < len(tenant) <= 200
                    or (not tenant.isprintable() and not _valid_unprintable(tenant))
                ):
                    self._errors += 1
                    return default is True
                elif c.open_all:
                    r = True
                elif tenant in c.tenants_off:
                    r = False
                elif tenant in c.tenants_on:
                    r = True
                else:
                    r = _hash(c.prefix + tenant, 0, False) % 100 < c.rollout
            c.counts[r] += 1
            return r
        except Exception:
            self._errors += 1
            return default is True

    def evaluate(self, key: str, tenant: str | None = None, default: bool = False) -> Evaluation:
        """Like ``is_enabled`` with the reason and the state version. Never raises."""
        try:
            c = self._table.get(key)
            if c is None:
                if self._compiled is None:
                    return _NO_STATE[default is True]
                if type(key) is not str:
                    self._errors += 1
                    return _ERROR[default is True]
                slot = self._counts.get(key)
                if slot is None:
                    slot = self._counts[key] = [0, 0]
                slot[default is True] += 1
                return _MISSING[default is True]
            ev = c.ev_fixed
            if ev is None:
                if tenant is None:
                    ev = c.ev_no_tenant
                elif (
                    tenant.__class__ is not str
                    or not 0 < len(tenant) <= 200
                    or (not tenant.isprintable() and not _valid_unprintable(tenant))
                ):
                    self._errors += 1
                    return Evaluation(default is True, Reason.ERROR, c.version, "invalid tenant")
                elif tenant in c.tenants_off:
                    ev = c.ev_tenant_off
                elif tenant in c.tenants_on:
                    ev = c.ev_tenant_on
                elif _hash(c.prefix + tenant, 0, False) % 100 < c.rollout:
                    ev = c.ev_rollout_on
                else:
                    ev = c.ev_rollout_off
            c.counts[ev.enabled] += 1
            return ev
        except Exception:
            # The one broad except of the SDK: a check must never take the caller
            # down (unhashable key, a tenant whose __eq__ raises, ...). Logged with
            # traceback at debug level to keep a hot loop of bad calls cheap.
            self._errors += 1
            log.debug("flag check failed; serving the default", exc_info=True)
            return _ERROR[default is True]

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
            compiled = compile_snapshot(snapshot, self._counts)
            self._install(compiled, source)
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

    def _install(self, compiled: CompiledSnapshot, source: str) -> None:
        self._compiled = compiled
        self._table = compiled.table
        self._source = source
        self._last_update_at = time.time()
        self._ready.set()
        sync = self._sync
        if sync is not None:
            sync.applied(source)

    def _notify(self, snapshot: Snapshot) -> None:
        for callback in list(self._callbacks):
            try:
                callback(self, snapshot)
            except Exception:  # user code: log it, keep the other callbacks running
                log.exception("on_change callback %r failed", callback)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(client, snapshot)`` after every applied update (on the
        sync thread). Returns a function that unregisters it."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    # ----------------------------------------------------------------- sync sink
    def receive_snapshot(self, snapshot: Snapshot, source: str) -> None:
        """Sync path: install ``snapshot`` unless it is older than what is applied
        (a late answer racing a newer change). A snapshot replaces a backup whatever
        its version. Never raises."""
        if snapshot.environment != self.environment:
            self.request_resync(f"snapshot of {snapshot.environment!r}, not {self.environment!r}")
            return
        with self._update_lock:
            current = self._compiled
            from_backup = self._source in ("backup", "none", "snapshot")
            if current is not None and not from_backup:
                if snapshot.version < current.version:
                    return
                if snapshot.version == current.version:
                    self._source = source
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
            if current is None or self._source in ("backup", "none", "snapshot"):
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

    def request_resync(self, why: str) -> None:
        """Fetch the whole snapshot soon (on the sync thread). Counted; logged once."""
        self._resyncs += 1
        if not self._resync_logged:
            self._resync_logged = True
            log.warning("flagrail %s: resyncing from a full snapshot (%s)", self.environment, why)
        else:
            log.debug("flagrail %s: resync (%s)", self.environment, why)
        sync = self._sync
        if sync is not None:
            sync.resync()

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
        snapshot came from: ``poll``, ``backup``, ``snapshot``, ``none``, or the
        ``source`` given to ``load_snapshot``), ``version``,
        ``last_update_at`` (epoch seconds of the last applied update), ``errors`` (bad
        arguments), ``resyncs``, ``flags``, ``live``, ``instance_id``."""
        sync = self._sync
        live = sync.live_source() if sync is not None else None
        source = live or self._source
        return {
            "source": source,
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
        """Start the background sync (threads; no I/O here). Idempotent; a no-op for a
        client without ``url`` or one already closed. Returns the client."""
        if self.url is None or self._closed or self._sync is not None:
            return self
        self._sync = _Sync(self)
        _syncing.add(self)
        self._sync.start()
        return self

    def close(self) -> None:
        """Stop syncing; send a last metrics report and instance report (closed), write
        the backup. Idempotent. Blocks for at most a few seconds."""
        if self._closed:
            return
        self._closed = True
        sync, self._sync = self._sync, None
        _syncing.discard(self)
        if sync is not None:
            sync.close()

    def _restart_after_fork(self) -> None:
        """In a forked child: fresh locks, a new instance id, and a sync of its own.
        Evaluations inherited from the parent are not reported again."""
        self._update_lock = threading.Lock()
        ready = self._ready.is_set()
        self._ready = threading.Event()
        if ready:
            self._ready.set()
        self.instance_id = uuid.uuid4().hex
        sync, self._sync = self._sync, None
        if sync is not None:
            sync.abandon()  # the parent's threads do not exist here; drop their objects
        if not self._closed:
            self.start()

    def __enter__(self) -> FlagClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Sync:
    """The background sync of one ``FlagClient``: its threads, HTTP client and Redis links.

    Threads (all daemons): ``flagrail-poll`` (snapshot fetches: first load, resyncs,
    ETag polling, backup at start), ``flagrail-report`` (backup writes, instance
    reports after each applied update, metrics every ``metrics_interval``), the
    Redis subscriber (when ``redis_url``) and the SSE consumer (while Redis is not
    live). Holds the client strongly: a client must be closed to stop syncing.
    """

    def __init__(self, client: FlagClient) -> None:
        import httpx

        from flags.sync import Backoff, InstanceReport
        from flags.sync.poll import SnapshotFetcher
        from flags.sync.sse import SseConsumer

        assert client.url is not None
        self.client = client
        self._InstanceReport = InstanceReport
        self._Backoff = Backoff
        self.http = httpx.Client(
            timeout=httpx.Timeout(5.0, connect=2.0),
            headers={"User-Agent": "flagrail-python-sdk"},
        )
        self.fetcher = SnapshotFetcher(self.http, client.url, client.token, client.environment)
        self.redis_sub: Any = None
        if client.redis_url:
            from flags.sync import channel_name
            from flags.sync.redis_pubsub import RedisSubscriber

            self.redis_sub = RedisSubscriber(
                client.redis_url,
                self._on_redis_message,
                self._on_redis_state,
                channels=[channel_name(client.channel_prefix, "changes", client.environment)],
                name="flagrail-redis-sdk",
            )
        self.sse = SseConsumer(
            self.http,
            client.url,
            client.token,
            client.environment,
            client,
            last_event_id=self._last_event_id,
            wanted=self._sse_wanted,
            on_live=self._on_sse_live,
        )
        self._redis_pub: Any = None
        self._stop = threading.Event()
        self._poll_wake = threading.Event()
        self._report_wake = threading.Event()
        self._resync_flag = False
        self._ack_needed = False
        self._backup_dirty = False
        self._logged: set[str] = set()
        # Baselines: what was already reported (a forked child starts from the parent's).
        self._reported = {k: (v[0], v[1]) for k, v in list(client._counts.items())}
        self._reported_app = {
            (flag, name): slot[0]
            for flag, named in list(client._app_counts.items())
            for name, slot in list(named.items())
        }
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------- control
    def start(self) -> None:
        for target, name in (
            (self._poll_loop, "flagrail-poll"),
            (self._report_loop, "flagrail-report"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        if self.redis_sub is not None:
            self.redis_sub.start()
        self.sse.start()

    def close(self) -> None:
        self._stop.set()
        self._poll_wake.set()
        self._report_wake.set()
        self.sse.close()
        if self.redis_sub is not None:
            self.redis_sub.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=3.0)
        try:
            self._write_backup()
            self._send_metrics(closed=True)
        finally:
            self.http.close()
            if self._redis_pub is not None:
                self._redis_pub.close()

    def abandon(self) -> None:
        """In a forked child: this object's threads are gone; leave its sockets alone
        (they are the parent's) and let it be collected."""
        self._threads = []

    def redis_live(self) -> bool:
        """Subscribed, and the server says it publishes on this prefix (a server without
        Redis would leave a subscribed SDK deaf; then the stream stays on)."""
        return (
            self.redis_sub is not None
            and self.redis_sub.live
            and self.fetcher.publishes == f"redis {self.client.channel_prefix}"
        )

    def live_source(self) -> str | None:
        if self.redis_live():
            return "redis"
        if self.sse.live:
            return "stream"
        return None

    def applied(self, source: str) -> None:
        """Called under the client's update lock after each install: cheap flags only."""
        self._ack_needed = True
        self._backup_dirty = True
        self._report_wake.set()

    def resync(self) -> None:
        self._resync_flag = True
        self._poll_wake.set()

    def _log_once(self, key: str, message: str, *args: object) -> None:
        if key in self._logged:
            log.debug(message, *args)
        else:
            self._logged.add(key)
            log.warning(message, *args)

    # ---------------------------------------------------------------- feeds
    def _server_data(self) -> bool:
        return self.client._compiled is not None and self.client._source not in (
            "backup",
            "none",
            "snapshot",
        )

    def _last_event_id(self) -> int | None:
        return self.client.version if self._server_data() else None

    def _sse_wanted(self) -> bool:
        return not self._stop.is_set() and not self.redis_live()

    def _on_sse_live(self, live: bool) -> None:
        self._poll_wake.set()

    def _on_redis_state(self, live: bool) -> None:
        if live:
            # Catch up on whatever was published while we were away (a 304 usually).
            self._resync_flag = True
        self.sse.wake()
        self._poll_wake.set()
        self._report_wake.set()

    def _on_redis_message(self, channel: str, data: bytes) -> None:
        from flags.sync.redis_pubsub import decode_change

        try:
            event = decode_change(data)
        except ValueError as exc:  # ValidationError and JSONDecodeError are ValueErrors
            self.client.request_resync(f"unreadable message on {channel}: {exc}")
            return
        self.client.receive_change(event, "redis")

    # ---------------------------------------------------------------- poll thread
    def _poll_loop(self) -> None:
        from flags.errors import FlagrailError

        client = self.client
        backoff = self._Backoff(0.2, max(1.0, client.poll_interval))
        next_at = 0.0
        backup_tried = False
        while not self._stop.is_set():
            if self._resync_flag or time.monotonic() >= next_at:
                self._resync_flag = False
                try:
                    self._fetch()
                    backoff.reset()
                    live = self.live_source() is not None
                    pause = max(SAFETY_POLL, client.poll_interval) if live else client.poll_interval
                    next_at = time.monotonic() + pause
                except (FlagrailError, OSError, ValueError) as exc:
                    self._log_once(
                        "fetch", "flagrail %s: snapshot fetch failed: %s", client.environment, exc
                    )
                    if not backup_tried and not client.ready:
                        backup_tried = True
                        self._load_backup()
                    next_at = time.monotonic() + min(backoff.next(), client.poll_interval)
                except Exception:  # keep the sync alive whatever happens
                    log.exception("flagrail %s: snapshot fetch crashed", client.environment)
                    next_at = time.monotonic() + client.poll_interval
            self._poll_wake.wait(max(0.0, next_at - time.monotonic()))
            self._poll_wake.clear()
            if self.live_source() is None:
                next_at = min(next_at, time.monotonic() + client.poll_interval)

    def _fetch(self) -> None:
        client = self.client
        known = client.version if self._server_data() else None
        snapshot = self.fetcher.fetch(known)
        if snapshot is None:
            if self.live_source() is None:
                client._source = "poll"
            return
        client.receive_snapshot(snapshot, "poll")

    def _load_backup(self) -> None:
        from flags.sync.backup import read_backup

        client = self.client
        if client.backup_path is None:
            return
        try:
            snapshot = read_backup(client.backup_path)
        except (OSError, ValueError) as exc:
            self._log_once(
                "backup",
                "flagrail %s: no usable backup at %s: %s",
                client.environment,
                client.backup_path,
                exc,
            )
            return
        if snapshot.environment != client.environment:
            self._log_once(
                "backup-env",
                "flagrail: backup %s is of environment %r, not %r",
                client.backup_path,
                snapshot.environment,
                client.environment,
            )
            return
        with client._update_lock:
            if client.ready:
                return  # the server answered meanwhile
            client._install(compile_snapshot(snapshot, client._counts), "backup")
        self._backup_dirty = False
        log.warning(
            "flagrail %s: server unreachable; serving the backup at version %s",
            client.environment,
            snapshot.version,
        )
        client._notify(snapshot)

    # ---------------------------------------------------------------- report thread
    def _report_loop(self) -> None:
        client = self.client
        next_metrics = time.monotonic() + client.metrics_interval
        while not self._stop.is_set():
            self._report_wake.wait(max(0.0, next_metrics - time.monotonic()))
            self._report_wake.clear()
            if self._stop.is_set():
                return
            try:
                if self._backup_dirty:
                    self._write_backup()
                if self._ack_needed:
                    self._ack_needed = False
                    self._send_instance_report()
                if time.monotonic() >= next_metrics:
                    next_metrics = time.monotonic() + client.metrics_interval
                    self._send_metrics()
            except Exception:  # keep reporting alive whatever happens
                log.exception("flagrail %s: report failed", client.environment)

    def _write_backup(self) -> None:
        from flags.sync.backup import write_backup

        client = self.client
        if client.backup_path is None or not self._backup_dirty:
            return
        snapshot = client.snapshot
        if snapshot is None or client._source in ("backup", "none"):
            return
        self._backup_dirty = False
        try:
            write_backup(client.backup_path, snapshot)
        except OSError as exc:
            self._log_once(
                "backup-write", "flagrail: cannot write backup %s: %s", client.backup_path, exc
            )

    def _instance_report(self, closed: bool = False) -> Any:
        client = self.client
        return self._InstanceReport(
            instance_id=client.instance_id,
            environment=client.environment,
            host=client.host[:255] or "unknown",
            pid=os.getpid(),
            app=client.app_name[:200] if client.app_name else None,
            applied_version=client.version if self._server_data() else 0,
            interval=min(3600.0, client.metrics_interval),
            closed=closed,
        )

    def _post(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> bool:
        import httpx

        from flags.sync.poll import auth_headers

        client = self.client
        try:
            response = self.http.post(
                f"{client.url}{path}",
                json=body,
                headers=auth_headers(client.token),
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            self._log_once(path, "flagrail %s: POST %s failed: %s", client.environment, path, exc)
            return False
        if response.status_code >= 300:
            self._log_once(
                path + "status",
                "flagrail %s: POST %s answered %s: %s",
                client.environment,
                path,
                response.status_code,
                response.text[:200],
            )
            return False
        return True

    def _send_instance_report(self) -> None:
        report = self._instance_report()
        if self.redis_live():
            from flags.sync import channel_name
            from flags.sync.redis_pubsub import connect

            try:
                if self._redis_pub is None:
                    self._redis_pub = connect(self.client.redis_url or "")
                channel = channel_name(self.client.channel_prefix, "instances", report.environment)
                self._redis_pub.publish(channel, json.dumps(report.to_dict()))
                return
            except Exception as exc:  # redis-py raises many types; HTTP is the fallback
                self._log_once(
                    "redis-report", "flagrail: instance report over redis failed: %s", exc
                )
                self._redis_pub = None
        self._post("/sdk/v1/instances", report.to_dict())

    def _send_metrics(self, closed: bool = False) -> None:
        client = self.client
        if not self._server_data() and not closed:
            return
        current = {k: (v[0], v[1]) for k, v in list(client._counts.items())}
        flags: dict[str, dict[str, int]] = {}
        for key, (off, on) in current.items():
            was_off, was_on = self._reported.get(key, (0, 0))
            if off - was_off > 0 or on - was_on > 0:
                flags[key] = {"on": max(0, on - was_on), "off": max(0, off - was_off)}
        app_now = {
            (flag, name): slot[0]
            for flag, named in list(client._app_counts.items())
            for name, slot in list(named.items())
        }
        counters: dict[str, dict[str, float]] = {}
        for (flag, name), value in app_now.items():
            delta = value - self._reported_app.get((flag, name), 0.0)
            if delta:
                counters.setdefault(flag, {})[name] = delta
        body = {
            "environment": client.environment,
            "instance": self._instance_report(closed).to_dict(),
            "flags": flags,
            "counters": counters,
        }
        if self._post("/sdk/v1/metrics", body, timeout=2.0 if closed else 5.0):
            self._reported = current
            self._reported_app = app_now


def _valid_unprintable(tenant: str) -> bool:
    """Slow path of tenant validation: unprintable but without control characters."""
    import unicodedata

    return not any(unicodedata.category(ch) == "Cc" for ch in tenant)


_default_client: FlagClient | None = None


def get_default_client() -> FlagClient | None:
    """The process's default client (set by the application or by the test plugin)."""
    return _default_client


def set_default_client(client: FlagClient | None) -> FlagClient | None:
    """Make ``client`` the process's default; returns the previous one."""
    global _default_client
    previous, _default_client = _default_client, client
    return previous
