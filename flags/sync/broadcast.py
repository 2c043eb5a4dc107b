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

from flags.background import Background
from flags.errors import FlagrailError, ForbiddenError, ValidationError
from flags.model import Environment, FlagChanged, Snapshot
from flags.store.telemetry import TelemetryStore, live_window
from flags.sync import InstanceReport

__all__ = [
    "RESYNC",
    "Broadcaster",
    "Confirmation",
    "InstanceRegistry",
    "Item",
    "ItemQueue",
    "Subscriber",
    "Subscription",
]

log = logging.getLogger("flagrail.sync.broadcast")


class SnapshotSource(Protocol):
    """What the broadcaster reads from the database (``SqlFlagStore`` fits)."""

    def snapshot(self, env: str) -> Snapshot: ...
    def list_environments(self) -> list[Environment]: ...


class Subscriber(Protocol):
    """What the broadcaster hands items to: ``Subscription``, or a stream that writes
    them itself (``api.streams.DirectStream``). ``put`` runs on ``loop`` and must not
    raise; ``push`` is ``put`` from any thread."""

    environment: str
    loop: asyncio.AbstractEventLoop
    owner: str | None

    def put(self, item: Item) -> None: ...
    def push(self, item: Item) -> None: ...


class Resync:
    """Queue marker: this stream fell behind and was dropped items; send it a snapshot."""

    __slots__ = ()


RESYNC = Resync()

# What a subscription's queue carries: a change, a whole snapshot, RESYNC, or None (closed).
Item = FlagChanged | Snapshot | Resync | None

# Seconds hint handling pauses after a hint the database did not bear out.
HINT_QUIET = 0.25

# Items a stream's queue holds before the stream counts as fallen behind.
DEFAULT_STREAM_QUEUE = 128


class ItemQueue:
    """A stream's bounded FIFO of items that gives up a backlog for one ``RESYNC``.

    Items come out in the order they were put, and at most ``max_items`` (at least 1)
    are held, not counting ``None`` (closed), which is always queued. An item put when
    the queue is full empties it, leaves one ``RESYNC`` in place of the items dropped
    and counts one in ``overflows``; every item but ``None`` put after that is dropped
    until ``pop`` returns that ``RESYNC`` (the snapshot the consumer then sends covers
    them). If a close was among the items dropped, ``None`` takes the place of the
    ``RESYNC``, and from then on the queue takes nothing but ``None``.

    Not thread-safe: put and pop from one thread (the stream's event loop).
    """

    __slots__ = ("_behind", "_items", "max_items", "overflows")

    def __init__(self, max_items: int = DEFAULT_STREAM_QUEUE) -> None:
        self.max_items = max(1, max_items)
        self.overflows = 0
        self._items: deque[Item] = deque()
        self._behind = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Item) -> bool:
        """Queue ``item``, or ``RESYNC`` in place of the queue when full. False when
        ``item`` was dropped and nothing changed (a queued ``RESYNC`` covers it)."""
        if item is None:
            self._items.append(None)
        elif self._behind:
            return False
        elif len(self._items) >= self.max_items:
            self._behind = True
            self.overflows += 1
            closed = None in self._items
            self._items.clear()
            self._items.append(None if closed else RESYNC)  # keep a close that was queued
        else:
            self._items.append(item)
        return True

    def pop(self) -> Item:
        """The oldest item; raises ``IndexError`` when empty. Once the ``RESYNC`` of an
        overflow is popped, items are queued again."""
        item = self._items.popleft()
        if item is RESYNC:
            self._behind = False
        return item


class Subscription:
    """One open stream's queue, fed from any thread, read on the stream's event loop.

    The queue is an ``ItemQueue`` of ``max_items``: a reader that falls behind (a client
    that stops reading, so the stream's writes block) has its queue emptied and is given
    one ``RESYNC`` marker instead, and every item pushed until it takes that marker is
    dropped (the snapshot it is sent then covers them). Memory per stream stays bounded
    whatever the change rate. ``None`` (closed) always gets through.

    Cost per item is a deque append and, when the reader waits, one future resolved:
    no task per ``get`` and no per-stream wake-up of the loop (``Broadcaster`` hands a
    change to all the streams of one loop in one ``call_soon_threadsafe``).
    """

    def __init__(
        self,
        environment: str,
        loop: asyncio.AbstractEventLoop,
        *,
        owner: str | None = None,
        max_items: int = DEFAULT_STREAM_QUEUE,
    ) -> None:
        self.environment = environment
        self.loop = loop
        self.owner = owner
        self._queue = ItemQueue(max_items)
        self._waiter: asyncio.Future[None] | None = None

    @property
    def max_items(self) -> int:
        """Items the queue holds before the stream counts as fallen behind (at least 1)."""
        return self._queue.max_items

    @property
    def overflows(self) -> int:
        """Times this stream fell behind and was given ``RESYNC`` for its backlog."""
        return self._queue.overflows

    def push(self, item: Item) -> None:
        """Thread-safe; a loop already closed (server stopping) is ignored."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.put, item)

    def put(self, item: Item) -> None:
        """On the loop only: enqueue, or fall back to one RESYNC marker when full."""
        if not self._queue.put(item):
            return  # the pending RESYNC covers it
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> int:
        """Items queued now (on the loop)."""
        return len(self._queue)

    async def get(self, timeout: float) -> Item | bool:
        """The next item, or False after ``timeout`` seconds without one. After a
        ``RESYNC`` is returned, items are queued again. One reader at a time."""
        if not self._queue:
            waiter = self.loop.create_future()
            self._waiter = waiter
            timer = self.loop.call_later(timeout, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._queue:
                return False
        return self._queue.pop()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _deliver(subs: Sequence[Subscriber], items: Sequence[Item]) -> None:
    """On one loop: hand ``items`` to each of ``subs``; one that raises is logged and
    the others still get them (a loop callback must not raise)."""
    for sub in subs:
        for item in items:
            try:
                sub.put(item)
            except Exception:
                log.exception("a stream of %s failed to take a change", sub.environment)


def _push_all(subs: Sequence[Subscriber], items: Sequence[Item]) -> None:
    """Thread-safe: one loop wake-up per event loop, not one per stream."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Subscriber]] = {}
    for sub in subs:
        by_loop.setdefault(sub.loop, []).append(sub)
    for loop, group in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a loop already closed: server stopping
            loop.call_soon_threadsafe(_deliver, group, list(items))


@dataclass
class _Feed:
    latest: int | None = None
    ring: deque[FlagChanged] = field(default_factory=deque)
    pending: dict[int, FlagChanged] = field(default_factory=dict)
    pending_since: float | None = None
    db_ahead_since: float | None = None
    db_version: int | None = None
    resync_requested: bool = False
    hinted: bool = False
    subscribers: set[Subscriber] = field(default_factory=set)


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
        behind_hold: float | None = None,
    ) -> None:
        """``hold``: seconds a gap in the versions may wait for the missing change.
        ``behind_hold`` (default ``hold``): seconds a version seen in the database may
        wait for its change message before the streams get a snapshot instead; short
        when nothing else carries changes to this replica (no Redis: other replicas' and
        workers' changes reach it through the database only)."""
        self.store = store
        self.ring_size = ring_size
        self.hold = hold
        self.behind_hold = hold if behind_hold is None else behind_hold
        self.db_poll_interval = db_poll_interval
        self.resyncs = 0
        self.hints = 0
        self.hints_ignored = 0
        self.closing = False
        self._feeds: dict[str, _Feed] = {}
        # Open streams per owner (token id), kept with ``attach``/``unsubscribe``.
        self._owners: dict[str, int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._hint_quiet_until = 0.0
        self._polled_at: float | None = None
        self._thread = Background("flagrail-broadcast", self._run)
        self._thread.wakes(self._wake)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.closing = False
        try:
            self._poll_database()
        except FlagrailError as exc:
            log.warning("cannot read environment versions yet: %s", exc)
        self._thread.start()

    def shutdown_streams(self) -> None:
        """End every open stream now and refuse new ones (server shutting down)."""
        self.closing = True
        with self._lock:
            subs = [s for feed in self._feeds.values() for s in feed.subscribers]
        _push_all(subs, [None])

    def close(self) -> None:
        self.shutdown_streams()
        self._thread.close()

    # ---------------------------------------------------------------- input
    def publish(self, events: Sequence[FlagChanged]) -> None:
        """Take committed changes (any order, duplicates allowed)."""
        for event in events:
            with self._lock:
                feed = self._feeds.setdefault(event.environment, _Feed())
                out = self._accept(feed, event)
                subs = list(feed.subscribers) if out else []
            if subs:
                _push_all(subs, out)

    def request_resync(self, environment: str) -> None:
        """Send every stream of ``environment`` a fresh snapshot soon (an unreadable
        message was seen for it)."""
        with self._lock:
            self._feeds.setdefault(environment, _Feed()).resync_requested = True

    def hint(self, environment: str, version: int) -> bool:
        """An unauthenticated report that ``environment`` reached ``version`` (a Redis
        change message): never applied as state. When it is ahead of what this replica
        delivered, the backstop reads the environment's version from the database at
        once and, if the database is indeed ahead, sends its streams a snapshot read
        from the database. A forged hint therefore costs one indexed read and changes
        nothing; it cannot burn a version number. Hints for environments this replica
        never saw in its database are ignored. True if the hint was taken up.
        """
        with self._lock:
            feed = self._feeds.get(environment)
            if feed is None or feed.latest is None or version <= feed.latest:
                self.hints_ignored += 1
                return False
            self.hints += 1
            feed.hinted = True
        self._wake.set()
        return True

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
    def subscribe(
        self,
        environment: str,
        loop: asyncio.AbstractEventLoop,
        *,
        owner: str | None = None,
        max_per_owner: int | None = None,
        max_items: int = DEFAULT_STREAM_QUEUE,
    ) -> Subscription | None:
        """Register a stream; subscribe *before* reading the snapshot so nothing is missed.

        ``owner`` (a token id) is counted: when it already holds ``max_per_owner``
        streams on this replica, nothing is registered and None is returned (checked
        and registered under one lock, so concurrent requests cannot overshoot).
        """
        sub = Subscription(environment, loop, owner=owner, max_items=max_items)
        return sub if self.attach(sub, max_per_owner=max_per_owner) else None

    def attach(self, sub: Subscriber, *, max_per_owner: int | None = None) -> bool:
        """Register ``sub`` (a ``Subscription`` or another ``Subscriber``) as
        ``subscribe`` does; False (nothing registered) when its owner holds
        ``max_per_owner`` streams already. O(1): owners' counts are kept."""
        owner = sub.owner
        with self._lock:
            if owner is not None:
                held = self._owners.get(owner, 0)
                if max_per_owner is not None and held >= max_per_owner:
                    return False
                self._owners[owner] = held + 1
            self._feeds.setdefault(sub.environment, _Feed()).subscribers.add(sub)
        if self.closing:
            sub.push(None)
        return True

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            feed = self._feeds.get(sub.environment)
            if feed is None or sub not in feed.subscribers:
                return
            feed.subscribers.discard(sub)
            owner = sub.owner
            if owner is not None:
                held = self._owners.get(owner, 0) - 1
                if held > 0:
                    self._owners[owner] = held
                else:
                    self._owners.pop(owner, None)

    def stream_count(self, owner: str | None = None) -> int:
        """Open streams on this replica (of ``owner`` only, when given)."""
        with self._lock:
            if owner is None:
                return sum(len(f.subscribers) for f in self._feeds.values())
            return self._owners.get(owner, 0)

    def latest(self, environment: str) -> int | None:
        with self._lock:
            feed = self._feeds.get(environment)
            return feed.latest if feed is not None else None

    def known_version(self, environment: str) -> int | None:
        """The newest version of ``environment`` this replica knows to be committed:
        what it delivered or what its last database poll read, whichever is newer; no
        I/O. A change committed through this replica is known before its request is
        answered; one committed elsewhere once Redis or the next poll (every
        ``db_poll_interval`` seconds) brings it. None when this replica cannot vouch
        for a version: the environment unseen, or no successful poll for
        ``4 * db_poll_interval`` (at least 2) seconds (the database is away, or the
        backstop is not running)."""
        polled = self._polled_at
        if polled is None or time.monotonic() - polled > max(2.0, 4 * self.db_poll_interval):
            return None
        feed = self._feeds.get(environment)
        if feed is None or feed.latest is None:
            return None
        return max(feed.latest, feed.db_version or 0)

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
    def _run(self, stop: threading.Event) -> None:
        next_poll = time.monotonic()
        while not stop.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            if stop.is_set():
                return
            try:
                hinted = self._hinted()
                if hinted or time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + self.db_poll_interval
                    self._poll_database()
                if hinted:
                    self._resolve_hints(hinted)
                self._resolve_stale()
            except FlagrailError as exc:
                log.debug("broadcast backstop: %s", exc)
            except Exception:  # keep the backstop alive whatever happens
                log.exception("broadcast backstop failed")

    def _hinted(self) -> list[str]:
        """Hinted environments, unless a false hint paused hint handling (then they
        wait, and the regular poll still runs): a flood of forged hints costs at most
        one database poll per ``HINT_QUIET`` seconds."""
        if time.monotonic() < self._hint_quiet_until:
            return []
        with self._lock:
            return [name for name, feed in self._feeds.items() if feed.hinted]

    def _resolve_hints(self, names: list[str]) -> None:
        """After a fresh database poll: a hinted environment the database shows ahead is
        resynced now (no ``hold``); a hint the database does not bear out is dropped."""
        resync = []
        with self._lock:
            for name in names:
                feed = self._feeds[name]
                feed.hinted = False
                ahead = feed.db_version is not None and feed.latest is not None
                if not (ahead and feed.db_version > feed.latest):  # type: ignore[operator]
                    self._hint_quiet_until = time.monotonic() + HINT_QUIET
                    continue
                if feed.subscribers:
                    resync.append(name)
                else:
                    feed.latest = feed.db_version
                    feed.ring.clear()
                    feed.db_ahead_since = None
        for name in resync:
            self._resync(name)

    def _poll_database(self) -> None:
        envs = self.store.list_environments()
        now = time.monotonic()
        self._polled_at = now
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
                behind = (
                    feed.db_ahead_since is not None
                    and now - feed.db_ahead_since >= self.behind_hold
                )
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
        _push_all(subs, [snapshot])


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
    # The token that first reported the instance (None: known from the database only).
    owner: str | None = None


# Persisted rows older than this are not folded back in (they are long dead).
MERGE_HORIZON = timedelta(hours=1)
DEFAULT_MAX_INSTANCES_PER_TOKEN = 10_000
DEFAULT_MAX_DIRTY = 10_000


class InstanceRegistry:
    """SDK instances as their reports describe them, shared by every replica.

    Reports land in memory at once (from HTTP, authenticated by a token) and reach
    the telemetry store within ``flush_interval`` seconds from a background thread,
    where other replicas read them. Thread-safe.

    Trust: an instance belongs to the token that first reported it on this replica
    (``claim``); another token cannot overwrite or close it, and no token can move it
    to another environment. A token holds at most ``max_per_token`` live instances.
    Instances not heard from within their live window are pruned from memory by the
    flush loop, and pending writes are capped at ``max_dirty`` (newest kept), so
    memory stays bounded whatever SDKs send. The flush loop survives any exception.
    """

    def __init__(
        self,
        telemetry: TelemetryStore | None,
        *,
        flush_interval: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_per_token: int = DEFAULT_MAX_INSTANCES_PER_TOKEN,
        max_dirty: int = DEFAULT_MAX_DIRTY,
    ) -> None:
        self.telemetry = telemetry
        self.flush_interval = flush_interval
        self.clock = clock
        self.max_per_token = max_per_token
        self.max_dirty = max_dirty
        self.flush_failures = 0
        self._seen: dict[str, _Seen] = {}
        self._dirty: list[tuple[InstanceReport, datetime]] = []
        self._cond = threading.Condition()
        self._thread = Background("flagrail-instances", self._run)

    def start(self) -> None:
        if self.telemetry is not None:
            self._thread.start()

    def close(self) -> None:
        self._thread.close()
        self.flush()

    def report(self, report: InstanceReport, *, at: datetime | None = None) -> None:
        """Record a report heard now (or ``at``) without an owner check (trusted
        callers and tests). Never raises."""
        at = at or self.clock()
        with self._cond:
            held = self._seen.get(report.instance_id)
            owner = held.owner if held is not None else None
            self._record_locked(report, at, owner)

    def claim(self, report: InstanceReport, owner: str, *, at: datetime | None = None) -> bool:
        """Record a report sent with the token ``owner``.

        Returns False (nothing recorded) when ``owner`` already holds ``max_per_token``
        live instances and this one is new. Raises ``ForbiddenError`` (field
        ``instance_id``) when the instance belongs to another token, and
        ``ValidationError`` (field ``environment``) when it would move to another
        environment.
        """
        at = at or self.clock()
        with self._cond:
            held = self._seen.get(report.instance_id)
            if held is not None:
                if held.owner is not None and held.owner != owner:
                    raise ForbiddenError(
                        f"instance {report.instance_id!r} belongs to another token",
                        field="instance_id",
                    )
                if held.report.environment != report.environment:
                    raise ValidationError(
                        f"instance {report.instance_id!r} reports for environment "
                        f"{held.report.environment!r}; it cannot move to "
                        f"{report.environment!r}",
                        field="environment",
                    )
            else:
                self._prune_locked(at)
                count = sum(1 for s in self._seen.values() if s.owner == owner)
                if count >= self.max_per_token:
                    return False
            self._record_locked(report, at, owner)
        return True

    def _record_locked(self, report: InstanceReport, at: datetime, owner: str | None) -> None:
        self._seen[report.instance_id] = _Seen(report, at, owner)
        self._dirty.append((report, at))
        if len(self._dirty) > self.max_dirty:
            del self._dirty[: len(self._dirty) - self.max_dirty]
        self._cond.notify_all()

    def prune(self, now: datetime | None = None) -> int:
        """Forget instances not heard from within their live window; returns how many."""
        with self._cond:
            return self._prune_locked(now or self.clock())

    def _prune_locked(self, now: datetime) -> int:
        dead = [
            key
            for key, seen in self._seen.items()
            if (now - seen.at).total_seconds() > live_window(seen.report.interval)
        ]
        for key in dead:
            del self._seen[key]
        return len(dead)

    def instance_count(self) -> int:
        with self._cond:
            return len(self._seen)

    def flush(self) -> None:
        """Write pending reports to the telemetry store (kept for a retry on failure,
        at most ``max_dirty``). Raises nothing but what the store raises unexpectedly."""
        if self.telemetry is None:
            return
        with self._cond:
            batch, self._dirty = self._dirty, []
        if not batch:
            return
        try:
            self.telemetry.record_instances(batch)
        except FlagrailError as exc:
            self.flush_failures += 1
            log.warning("cannot persist %d instance reports: %s", len(batch), exc)
            with self._cond:
                self._dirty = (batch + self._dirty)[-self.max_dirty :]

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.flush_interval):
            try:
                self.flush()
                self.prune()
            except Exception:  # the loop must outlive any one bad batch: logged, dropped
                self.flush_failures += 1
                log.exception("instance flush failed; the batch is dropped")

    def _merge_persisted(self, environments: Sequence[str], now: datetime) -> None:
        """Fold in what other replicas persisted (newer reports win)."""
        if self.telemetry is None:
            return
        since = now - MERGE_HORIZON
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
                if (now - r["last_seen_at"]).total_seconds() > live_window(r["interval"]):
                    continue  # dead: folding it in would only grow memory
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
                owner = held.owner if held is not None else None
                self._seen[r["instance_id"]] = _Seen(report, r["last_seen_at"], owner)

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
