"""Server side of propagation: fan-out of changes to SSE streams, and the instance registry.

``Broadcaster`` receives committed changes from every source a replica has (its
own store's listener, the Redis subscriber carrying other replicas' changes, and
a poll of the environment versions in the database as a backstop without
Redis), puts them in version order, drops duplicates, and hands each one to
every open stream of its environment. A ring buffer of recent changes lets a
reconnecting stream resume after ``Last-Event-ID``. A change that cannot be
placed (a gap not filled within ``hold`` seconds, or a version in the database
that no message announced) makes it read a fresh snapshot and send that instead.

``InstanceRegistry`` holds the SDK instances' reports (which version each
applied), persists them to the telemetry store in the background, and answers
"has every live instance applied version N yet?" for kill confirmation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from flags.errors import FlagrailError
from flags.model import Environment, FlagChanged, Snapshot
from flags.store.telemetry import TelemetryStore, live_window
from flags.sync import InstanceReport

__all__ = ["Broadcaster", "Confirmation", "InstanceRegistry", "Subscription"]

log = logging.getLogger("flagrail.sync.broadcast")


class SnapshotSource(Protocol):
    """What the broadcaster reads from the database (``SqlFlagStore`` fits)."""

    def snapshot(self, env: str) -> Snapshot: ...
    def list_environments(self) -> list[Environment]: ...


# What a subscription's queue carries: a change, a whole snapshot, or None (closed).
Item = FlagChanged | Snapshot | None


class Subscription:
    """One open stream's queue, fed from any thread, read on the stream's event loop."""

    def __init__(self, environment: str, loop: asyncio.AbstractEventLoop) -> None:
        self.environment = environment
        self.loop = loop
        self.queue: asyncio.Queue[Item] = asyncio.Queue()

    def push(self, item: Item) -> None:
        """Thread-safe; a loop already closed (server stopping) is ignored."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self, timeout: float) -> Item | bool:
        """The next item, or False after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return False


@dataclass
class _Feed:
    latest: int | None = None
    ring: deque[FlagChanged] = field(default_factory=deque)
    pending: dict[int, FlagChanged] = field(default_factory=dict)
    pending_since: float | None = None
    db_ahead_since: float | None = None
    db_version: int | None = None
    resync_requested: bool = False
    subscribers: set[Subscription] = field(default_factory=set)


class Broadcaster:
    """In-memory, in-order fan-out of change events per environment.

    Thread-safe. ``publish`` has the signature of a ``SqlFlagStore`` listener and
    never raises. ``start()`` reads the environment versions (when the database
    answers) and starts the reorder/backstop thread; ``close()`` ends every stream.
    """

    def __init__(
        self,
        store: SnapshotSource,
        *,
        ring_size: int = 1024,
        hold: float = 0.25,
        db_poll_interval: float = 0.5,
    ) -> None:
        self.store = store
        self.ring_size = ring_size
        self.hold = hold
        self.db_poll_interval = db_poll_interval
        self.resyncs = 0
        self.closing = False
        self._feeds: dict[str, _Feed] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.closing = False
        try:
            self._poll_database()
        except FlagrailError as exc:
            log.warning("cannot read environment versions yet: %s", exc)
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="flagrail-broadcast", daemon=True
            )
            self._thread.start()

    def shutdown_streams(self) -> None:
        """End every open stream now and refuse new ones (server shutting down)."""
        self.closing = True
        with self._lock:
            subs = [s for feed in self._feeds.values() for s in feed.subscribers]
        for sub in subs:
            sub.push(None)

    def close(self) -> None:
        self.shutdown_streams()
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    # ---------------------------------------------------------------- input
    def publish(self, events: Sequence[FlagChanged]) -> None:
        """Take committed changes (any order, duplicates allowed)."""
        for event in events:
            with self._lock:
                feed = self._feeds.setdefault(event.environment, _Feed())
                out = self._accept(feed, event)
                subs = list(feed.subscribers) if out else []
            for sub in subs:
                for item in out:
                    sub.push(item)

    def request_resync(self, environment: str) -> None:
        """Send every stream of ``environment`` a fresh snapshot soon (an unreadable
        message was seen for it)."""
        with self._lock:
            self._feeds.setdefault(environment, _Feed()).resync_requested = True

    def _accept(self, feed: _Feed, event: FlagChanged) -> list[FlagChanged]:
        """Under the lock: the events now deliverable in order."""
        if feed.latest is None:
            feed.latest = event.version - 1
        if event.version <= feed.latest:
            return []
        if event.version > feed.latest + 1:
            feed.pending[event.version] = event
            if feed.pending_since is None:
                feed.pending_since = time.monotonic()
            return []
        out = [event]
        feed.latest = event.version
        while feed.latest + 1 in feed.pending:
            nxt = feed.pending.pop(feed.latest + 1)
            out.append(nxt)
            feed.latest = nxt.version
        feed.pending = {v: e for v, e in feed.pending.items() if v > feed.latest}
        feed.pending_since = time.monotonic() if feed.pending else None
        feed.db_ahead_since = None
        for e in out:
            feed.ring.append(e)
        while len(feed.ring) > self.ring_size:
            feed.ring.popleft()
        return out

    # ---------------------------------------------------------------- streams
    def subscribe(self, environment: str, loop: asyncio.AbstractEventLoop) -> Subscription:
        """Register a stream; subscribe *before* reading the snapshot so nothing is missed."""
        sub = Subscription(environment, loop)
        with self._lock:
            self._feeds.setdefault(environment, _Feed()).subscribers.add(sub)
        if self.closing:
            sub.push(None)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            feed = self._feeds.get(sub.environment)
            if feed is not None:
                feed.subscribers.discard(sub)

    def stream_count(self) -> int:
        with self._lock:
            return sum(len(f.subscribers) for f in self._feeds.values())

    def latest(self, environment: str) -> int | None:
        with self._lock:
            feed = self._feeds.get(environment)
            return feed.latest if feed is not None else None

    def replay(self, environment: str, after: int) -> list[FlagChanged] | None:
        """The changes after version ``after`` up to the latest, or None when the ring
        no longer holds all of them (the stream must then start with a snapshot)."""
        with self._lock:
            feed = self._feeds.get(environment)
            if feed is None or feed.latest is None or after > feed.latest:
                return None
            if after == feed.latest:
                return []
            if not feed.ring or feed.ring[0].version > after + 1:
                return None
            return [e for e in feed.ring if e.version > after]

    # ---------------------------------------------------------------- backstop
    def _run(self) -> None:
        next_poll = time.monotonic()
        while not self._stop.wait(0.05):
            try:
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.db_poll_interval
                    self._poll_database()
                self._resolve_stale()
            except FlagrailError as exc:
                log.debug("broadcast backstop: %s", exc)
            except Exception:  # keep the backstop alive whatever happens
                log.exception("broadcast backstop failed")

    def _poll_database(self) -> None:
        envs = self.store.list_environments()
        now = time.monotonic()
        with self._lock:
            for env in envs:
                feed = self._feeds.setdefault(env.name, _Feed())
                feed.db_version = env.version
                if feed.latest is None:
                    feed.latest = env.version
                elif env.version > feed.latest:
                    if feed.db_ahead_since is None:
                        feed.db_ahead_since = now
                else:
                    feed.db_ahead_since = None

    def _resolve_stale(self) -> None:
        now = time.monotonic()
        stale = []
        with self._lock:
            for name, feed in self._feeds.items():
                gap = feed.pending_since is not None and now - feed.pending_since >= self.hold
                behind = feed.db_ahead_since is not None and now - feed.db_ahead_since >= self.hold
                if not (gap or behind or feed.resync_requested):
                    continue
                feed.resync_requested = False
                if feed.subscribers:
                    stale.append(name)
                else:  # nobody listens: catch up on the number, read no snapshot
                    feed.latest = max(feed.latest or 0, feed.db_version or 0)
                    feed.ring.clear()
                    feed.pending = {v: e for v, e in feed.pending.items() if v > feed.latest}
                    feed.pending_since = now if feed.pending else None
                    feed.db_ahead_since = None
        for name in stale:
            self._resync(name)

    def _resync(self, environment: str) -> None:
        snapshot = self.store.snapshot(environment)
        with self._lock:
            feed = self._feeds.setdefault(environment, _Feed())
            if feed.latest is not None and snapshot.version < feed.latest:
                return
            self.resyncs += 1
            feed.latest = snapshot.version
            feed.ring.clear()
            feed.pending = {v: e for v, e in feed.pending.items() if v > snapshot.version}
            feed.pending_since = time.monotonic() if feed.pending else None
            feed.db_ahead_since = None
            subs = list(feed.subscribers)
        log.info(
            "resynced %s at version %s for %d streams", environment, snapshot.version, len(subs)
        )
        for sub in subs:
            sub.push(snapshot)


@dataclass(frozen=True, slots=True)
class Confirmation:
    """Outcome of waiting for instances to apply versions (``POST .../kill?wait=``)."""

    confirmed: int
    live: int
    lagging: list[dict[str, Any]]
    elapsed_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "confirmed": self.confirmed,
            "live": self.live,
            "lagging": self.lagging,
            "elapsed_ms": self.elapsed_ms,
        }


@dataclass
class _Seen:
    report: InstanceReport
    at: datetime


class InstanceRegistry:
    """SDK instances as their reports describe them, shared by every replica.

    Reports land in memory at once (from HTTP or Redis) and reach the telemetry
    store within ``flush_interval`` seconds from a background thread, where other
    replicas read them. Thread-safe.
    """

    def __init__(
        self,
        telemetry: TelemetryStore | None,
        *,
        flush_interval: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.telemetry = telemetry
        self.flush_interval = flush_interval
        self.clock = clock
        self._seen: dict[str, _Seen] = {}
        self._dirty: list[tuple[InstanceReport, datetime]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.telemetry is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="flagrail-instances", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self.flush()

    def report(self, report: InstanceReport, *, at: datetime | None = None) -> None:
        """Record a report heard now (or ``at``). Never raises."""
        at = at or self.clock()
        with self._cond:
            self._seen[report.instance_id] = _Seen(report, at)
            self._dirty.append((report, at))
            self._cond.notify_all()

    def flush(self) -> None:
        """Write pending reports to the telemetry store (kept for a retry on failure)."""
        if self.telemetry is None:
            return
        with self._cond:
            batch, self._dirty = self._dirty, []
        if not batch:
            return
        try:
            self.telemetry.record_instances(batch)
        except FlagrailError as exc:
            log.warning("cannot persist %d instance reports: %s", len(batch), exc)
            with self._cond:
                self._dirty = (batch + self._dirty)[-10_000:]

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def _merge_persisted(self, environments: Sequence[str], now: datetime) -> None:
        """Fold in what other replicas persisted (newer reports win)."""
        if self.telemetry is None:
            return
        since = now - timedelta(hours=1)
        rows: list[dict[str, Any]] = []
        for env in environments:
            try:
                rows.extend(
                    dict(r, environment=env)
                    for r in self.telemetry.instances(env, seen_since=since, include_closed=True)
                )
            except FlagrailError as exc:
                log.debug("cannot read persisted instances: %s", exc)
        with self._cond:
            for r in rows:
                held = self._seen.get(r["instance_id"])
                if held is not None and held.at >= r["last_seen_at"]:
                    continue
                report = InstanceReport(
                    r["instance_id"],
                    r["environment"],
                    r["host"],
                    r["pid"],
                    r["app"],
                    r["applied_version"],
                    r["interval"],
                    r["closed"],
                )
                self._seen[r["instance_id"]] = _Seen(report, r["last_seen_at"])

    def _live_locked(self, environment: str, now: datetime) -> list[_Seen]:
        out = []
        for seen in self._seen.values():
            r = seen.report
            if r.environment != environment or r.closed:
                continue
            if (now - seen.at).total_seconds() <= live_window(r.interval):
                out.append(seen)
        return sorted(out, key=lambda s: s.report.instance_id)

    def live(self, environment: str) -> list[dict[str, Any]]:
        """Live instances of ``environment``: ``{"instance_id", "host", "pid", "app",
        "applied_version", "last_seen_at"}`` (ISO-8601), by instance id."""
        now = self.clock()
        self._merge_persisted([environment], now)
        with self._cond:
            return [_public(s) for s in self._live_locked(environment, now)]

    def wait_applied(self, targets: dict[str, int], timeout: float) -> Confirmation:
        """Wait until every instance live now, in each environment of ``targets``, has
        applied at least that environment's version, or ``timeout`` seconds pass.

        Instances that close meanwhile drop out of ``live``. Reads other replicas'
        persisted reports every quarter second.
        """
        started = time.monotonic()
        deadline = started + max(0.0, timeout)
        envs = sorted(targets)
        now = self.clock()
        self._merge_persisted(envs, now)
        with self._cond:
            watched = {s.report.instance_id for env in envs for s in self._live_locked(env, now)}
        next_merge = time.monotonic() + 0.25
        while True:
            with self._cond:
                live = [self._seen[i] for i in sorted(watched) if i in self._seen]
                live = [s for s in live if not s.report.closed]
                lagging = [
                    s for s in live if s.report.applied_version < targets[s.report.environment]
                ]
                remaining = deadline - time.monotonic()
                if not lagging or remaining <= 0:
                    return Confirmation(
                        confirmed=len(live) - len(lagging),
                        live=len(live),
                        lagging=[_public(s) for s in lagging],
                        elapsed_ms=int((time.monotonic() - started) * 1000),
                    )
                self._cond.wait(min(remaining, 0.05))
            if time.monotonic() >= next_merge:
                next_merge = time.monotonic() + 0.25
                self._merge_persisted(envs, self.clock())


def _public(seen: _Seen) -> dict[str, Any]:
    r = seen.report
    return {
        "instance_id": r.instance_id,
        "host": r.host,
        "pid": r.pid,
        "app": r.app,
        "applied_version": r.applied_version,
        "last_seen_at": seen.at.isoformat(),
    }
