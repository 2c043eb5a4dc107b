"""The flagrail server as a ``SnapshotSource``: Redis, SSE, ETag polling, backup, reports.

``ServerSource`` is what a ``FlagClient`` built with a ``url`` syncs through. It
talks to its client only through ``flags.sync.SnapshotSink``.

Sync, in order of preference: the Redis channel ``<prefix>changes:<env>`` when
``redis_url`` is given and Redis answers (and the server says it publishes
there), whose messages are signed changes (applied once verified) or hints
(a version ahead of the served one makes the subscriber thread fetch the
snapshot at once; no unverified state is ever taken from Redis); else
the SSE stream ``/sdk/v1/stream``; ETag polling of
``/sdk/v1/snapshot`` every ``poll_interval`` seconds whenever neither is live
(and every ``SAFETY_POLL`` seconds as a safety net while one is). At start,
while the server cannot be reached, the backup at ``backup_path`` is served;
every applied snapshot is written there.

Threads (all daemons, started by ``start``, none by the constructor):
``flagrail-poll`` (snapshot fetches: first load, resyncs, polling, the backup at
start, a hint's fetch while another fetch runs), ``flagrail-report`` (backup
writes, an instance report after applied updates (one per ``ACK_GAP`` at most), metrics every
``metrics_interval``), the Redis subscriber (when ``redis_url``; it fetches the
snapshot a hint asks for itself) and the SSE consumer (while Redis is not live). Connections are
opened by those threads, never by ``start`` itself, so ``start`` never blocks.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from flags.errors import FlagrailError, StoreUnavailableError
from flags.model import InstanceReport
from flags.sync import DEFAULT_PREFIX, Backoff, SnapshotSink, channel_name
from flags.sync.backup import read_backup, write_backup
from flags.sync.poll import SdkHttp, SnapshotFetcher, auth_headers, sdk_http
from flags.sync.sse import SseConsumer

__all__ = ["SAFETY_POLL", "ServerOptions", "ServerSource"]

log = logging.getLogger("flagrail.client")

# Seconds between safety polls while Redis or the stream is live.
SAFETY_POLL = 30.0
# Seconds hint-triggered fetches pause after a hint that turned out false (a 304).
HINT_QUIET = 1.0
# The server's bound on one count in one report (api.routes.sdk.MAX_COUNT).
MAX_REPORTED_COUNT = 1_000_000_000
# Seconds from an applied change to its acknowledgement (the instance report that
# ``kill?wait=`` confirms with), drawn per ack: the report is bookkeeping, so it waits
# until the change has landed in the other processes and the kill's own answer has gone
# out, and a fleet's reports are spread over the window instead of arriving together
# (16 processes acking at once made a kill's answer ~40 ms slower on 2 cores).
ACK_DELAY = (0.02, 0.08)  # the backup file after a change waits as long
# Seconds from one acknowledgement to the next at the least: changes applied back to
# back are acknowledged together. A fleet's reports after every change of a burst took
# server and SDK CPU from the next change's delivery (16 processes, 2 cores: the signed
# Redis path's p99 14 ms without reports, 18-21 ms with one per change).
ACK_GAP = 0.2


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Where and how a ``ServerSource`` syncs (``FlagClient``'s constructor arguments).

    ``channel_prefix`` names the Redis channels (the server's ``FLAGRAIL_REDIS_PREFIX``).
    Intervals are seconds; the constructor of ``FlagClient`` clamps them to >= 0.05.
    """

    url: str
    token: str | None
    environment: str
    redis_url: str | None = None
    backup_path: Path | None = None
    poll_interval: float = 5.0
    metrics_interval: float = 10.0
    app_name: str | None = None
    channel_prefix: str = DEFAULT_PREFIX


class ServerSource:
    """Feed one client from a flagrail server. See the module docstring for the threads.

    Constructing does nothing but store ``options``. Holds its sink strongly
    once started: a client must be closed to stop syncing.
    """

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.host = socket.gethostname()
        self._sink: SnapshotSink | None = None
        self._http: httpx.Client | None = None
        # Fetches and reports each on a connection of their own: a report in flight
        # never holds up a hinted fetch.
        self._fetch_http: SdkHttp | None = None
        self._report_http: SdkHttp | None = None
        self._fetcher: SnapshotFetcher | None = None
        self._redis_sub: Any = None
        self._sse: SseConsumer | None = None
        self._stop = threading.Event()
        self._poll_wake = threading.Event()
        self._report_wake = threading.Event()
        self._resync_flag = False
        self._ack_needed = False
        self._backup_dirty = False
        self._logged: set[str] = set()
        self._reported: dict[str, tuple[int, int]] = {}
        self._reported_app: dict[tuple[str, str], float] = {}
        self._acked_at = float("-inf")  # monotonic time of the last acknowledgement
        self._threads: list[threading.Thread] = []
        # Redis change hints taken up (a fetch followed) and unreadable ones dropped.
        self.hints = 0
        self.unreadable_hints = 0
        # Redis messages dropped for a missing or wrong signature (signed mode).
        self.rejected = 0
        self._hint_pending = False
        # The newest version a hint announced (sent as min_version with the fetch).
        self._hint_version = 0
        self._hint_deferred = False
        self._hint_quiet_until = 0.0
        # Snapshot fetches a Redis hint caused.
        self.hint_fetches = 0
        # One snapshot fetch at a time (the poll thread's, or a hint's on the Redis thread).
        self._fetch_lock = threading.Lock()

    # ---------------------------------------------------------------- control
    def start(self, sink: SnapshotSink) -> None:
        """Start the threads; returns at once (no I/O here). Call once."""
        opts = self.options
        self._sink = sink
        # Baselines: what was already counted is not ours to report (a forked
        # child starts from its parent's counts).
        self._reported = dict(sink.counts())
        self._reported_app = _flatten(sink.counters())
        self._http = httpx.Client(
            timeout=httpx.Timeout(5.0, connect=2.0),
            headers={"User-Agent": "flagrail-python-sdk"},
        )
        self._fetch_http = sdk_http(opts.url, self._http)
        self._report_http = sdk_http(opts.url, self._http)
        self._fetcher = SnapshotFetcher(self._fetch_http, opts.token, opts.environment)
        if opts.redis_url:
            from flags.sync.redis_pubsub import RedisSubscriber

            self._redis_sub = RedisSubscriber(
                opts.redis_url,
                self._on_redis_message,
                self._on_redis_state,
                channels=[channel_name(opts.channel_prefix, "changes", opts.environment)],
                name="flagrail-redis-sdk",
            )
        self._sse = SseConsumer(
            self._http,
            opts.url,
            opts.token,
            opts.environment,
            sink,
            last_event_id=self._last_event_id,
            wanted=self._sse_wanted,
            on_live=self._on_sse_live,
        )
        for target, name in (
            (self._poll_loop, "flagrail-poll"),
            (self._report_loop, "flagrail-report"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()
        if self._redis_sub is not None:
            self._redis_sub.start()
        self._sse.start()

    def close(self) -> None:
        """Stop the threads, write the backup and send a last (closed) metrics report.

        Blocks for at most a few seconds. Idempotent.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self._poll_wake.set()
        self._report_wake.set()
        if self._sse is not None:
            self._sse.close()
        if self._redis_sub is not None:
            self._redis_sub.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=3.0)
        if self._sink is None:
            return
        try:
            self._write_backup()
            self._send_metrics(closed=True)
        finally:
            for http in (self._fetch_http, self._report_http):
                if http is not None:
                    http.close()
            if self._http is not None:
                self._http.close()

    def evaluate_foreign(self, key: str, tenant: object, default: bool) -> None:
        """None: a flagrail server's snapshot holds every flag it serves."""
        return None

    def after_fork(self) -> ServerSource:
        """In a forked child: this object's threads are gone and its sockets are the
        parent's; leave them alone and return a fresh source with the same options."""
        self._threads = []
        return ServerSource(self.options)

    def redis_live(self) -> bool:
        """Subscribed, and the server says it publishes on this prefix (a server without
        Redis would leave a subscribed SDK deaf; then the stream stays on)."""
        return (
            self._redis_sub is not None
            and self._redis_sub.live
            and self._fetcher is not None
            and self._fetcher.publishes == f"redis {self.options.channel_prefix}"
        )

    def live(self) -> str | None:
        if self.redis_live():
            return "redis"
        if self._sse is not None and self._sse.live:
            return "stream"
        return None

    def applied(self) -> None:
        """Called under the client's update lock after each install: cheap flags only."""
        self._ack_needed = True
        if self.options.backup_path is not None:
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

    @property
    def sink(self) -> SnapshotSink:
        assert self._sink is not None, "ServerSource used before start()"
        return self._sink

    # ---------------------------------------------------------------- feeds
    def _served_version(self) -> int | None:
        served = self.sink.served()
        return served.version if served is not None else None

    def _last_event_id(self) -> int | None:
        return self._served_version()

    def _sse_wanted(self) -> bool:
        return not self._stop.is_set() and not self.redis_live()

    def _on_sse_live(self, live: bool) -> None:
        self._poll_wake.set()

    def _on_redis_state(self, live: bool) -> None:
        if live:
            # Catch up on whatever was published while we were away (a 304 usually).
            self._resync_flag = True
        if self._sse is not None:
            self._sse.wake()
        self._poll_wake.set()
        self._report_wake.set()

    def _on_redis_message(self, channel: str, data: bytes) -> None:
        """Anyone who can PUBLISH could have sent it. With the verify key the server
        gave in its snapshot response, only a correctly signed change is applied (in
        order, as any change); others are counted in ``rejected`` and dropped.
        Without one, the message is a hint: a version ahead of the served one makes
        this thread fetch the snapshot (ETag'd) at once, or the poll thread right after
        its own fetch when one is running; anything else is dropped. Hints arriving
        during a fetch are coalesced into at most one more."""
        from flags.sync.redis_pubsub import read_hint, verify_change

        key = self._fetcher.verify_key if self._fetcher is not None else None
        if key is not None:
            event = verify_change(data, self.options.environment, key)
            if event is None:
                self.rejected += 1
                return
            self.sink.receive_change(event, "redis")
            return

        version = read_hint(data, self.options.environment)
        if version is None:
            self.unreadable_hints += 1
            return
        served = self._served_version()
        if served is not None and version <= served:
            return
        self.hints += 1
        self._hint_version = max(self._hint_version, version)
        if time.monotonic() < self._hint_quiet_until:
            # The last hint was false (a 304): fetch once the quiet period ends, so a
            # flood of forged hints costs at most one fetch per HINT_QUIET seconds.
            self._hint_deferred = True
            self._poll_wake.set()
            return
        # Fetch right here on the subscriber thread (no hand-off to the poll thread),
        # unless a fetch is running: then the poll thread fetches again after it.
        if self._fetch_lock.acquire(blocking=False):
            try:
                self._hint_pending = True
                self._fetch()
                return
            except Exception as exc:  # the poll thread retries, with its backoff and logs
                log.debug("flagrail %s: hinted fetch failed: %s", self.options.environment, exc)
            finally:
                self._fetch_lock.release()
        self._hint_pending = True
        self.resync()

    # ---------------------------------------------------------------- poll thread
    def _poll_loop(self) -> None:
        opts = self.options
        backoff = Backoff(0.2, max(1.0, opts.poll_interval))
        next_at = 0.0
        backup_tried = False
        while not self._stop.is_set():
            if self._hint_deferred and time.monotonic() >= self._hint_quiet_until:
                self._hint_deferred = False
                self._hint_pending = True
                self._resync_flag = True
            if self._resync_flag or time.monotonic() >= next_at:
                self._resync_flag = False
                try:
                    with self._fetch_lock:
                        self._fetch()
                    backoff.reset()
                    pause = opts.poll_interval
                    if self.live() is not None:
                        pause = max(SAFETY_POLL, opts.poll_interval)
                    next_at = time.monotonic() + pause
                except (FlagrailError, OSError, ValueError) as exc:
                    self._log_once(
                        "fetch", "flagrail %s: snapshot fetch failed: %s", opts.environment, exc
                    )
                    if not backup_tried and self.sink.served() is None:
                        backup_tried = True
                        self._load_backup()
                    next_at = time.monotonic() + min(backoff.next(), opts.poll_interval)
                except Exception:  # keep the sync alive whatever happens
                    log.exception("flagrail %s: snapshot fetch crashed", opts.environment)
                    next_at = time.monotonic() + opts.poll_interval
            wake_at = next_at
            if self._hint_deferred:
                wake_at = min(wake_at, self._hint_quiet_until)
            self._poll_wake.wait(max(0.0, wake_at - time.monotonic()))
            self._poll_wake.clear()
            if self.live() is None:
                next_at = min(next_at, time.monotonic() + opts.poll_interval)

    def _fetch(self) -> None:
        assert self._fetcher is not None
        # A fetch a Redis hint asked for is the Redis path's delivery: named "redis".
        hinted, self._hint_pending = self._hint_pending, False
        source = "redis" if hinted else "poll"
        if hinted:
            self.hint_fetches += 1
        # A hinted fetch names the hinted version, so a replica that has not heard of
        # it yet reads its database instead of answering 304 from memory.
        served = self._served_version()
        wanted = self._hint_version if hinted and self._hint_version > (served or 0) else None
        snapshot = self._fetcher.fetch(served, min_version=wanted)
        if snapshot is None:
            if hinted:  # a false hint: hold the next ones back a while
                self._hint_quiet_until = time.monotonic() + HINT_QUIET
            if self.live() is None:
                self.sink.confirm("poll")
            return
        self.sink.receive_snapshot(snapshot, source)

    def _load_backup(self) -> None:
        opts = self.options
        if opts.backup_path is None:
            return
        try:
            snapshot = read_backup(opts.backup_path)
        except (OSError, ValueError) as exc:
            self._log_once(
                "backup",
                "flagrail %s: no usable backup at %s: %s",
                opts.environment,
                opts.backup_path,
                exc,
            )
            return
        if snapshot.environment != opts.environment:
            self._log_once(
                "backup-env",
                "flagrail: backup %s is of environment %r, not %r",
                opts.backup_path,
                snapshot.environment,
                opts.environment,
            )
            return
        if not self.sink.receive_backup(snapshot):
            return  # the server answered meanwhile
        self._backup_dirty = False
        log.warning(
            "flagrail %s: server unreachable; serving the backup at version %s",
            opts.environment,
            snapshot.version,
        )

    # ---------------------------------------------------------------- report thread
    def _report_loop(self) -> None:
        opts = self.options
        next_metrics = time.monotonic() + opts.metrics_interval
        while not self._stop.is_set():
            self._report_wake.wait(max(0.0, next_metrics - time.monotonic()))
            self._report_wake.clear()
            if self._stop.is_set():
                return
            try:
                # Both follow an applied change: off its critical path (ACK_DELAY), and
                # one write and one report for the changes applied meanwhile; reports
                # at least ACK_GAP apart, whenever the change that asks for one came.
                pending = self._ack_needed or self._backup_dirty
                if pending and self._stop.wait(random.uniform(*ACK_DELAY)):
                    return  # close() writes the backup and sends the last report
                if self._backup_dirty:
                    self._write_backup()
                if self._ack_needed:
                    gap = self._acked_at + ACK_GAP - time.monotonic()
                    if gap > 0 and self._stop.wait(gap):
                        return
                    self._ack_needed = False
                    self._acked_at = time.monotonic()
                    self._send_instance_report()
                if time.monotonic() >= next_metrics:
                    next_metrics = time.monotonic() + opts.metrics_interval
                    self._send_metrics()
            except Exception:  # keep reporting alive whatever happens
                log.exception("flagrail %s: report failed", opts.environment)

    def _write_backup(self) -> None:
        path = self.options.backup_path
        if path is None or not self._backup_dirty:
            return
        snapshot = self.sink.served()
        if snapshot is None:
            return
        self._backup_dirty = False
        try:
            write_backup(path, snapshot)
        except OSError as exc:
            self._log_once("backup-write", "flagrail: cannot write backup %s: %s", path, exc)

    def _instance_report(self, closed: bool = False) -> InstanceReport:
        opts = self.options
        return InstanceReport(
            instance_id=self.sink.instance_id,
            environment=opts.environment,
            host=self.host[:255] or "unknown",
            pid=os.getpid(),
            app=opts.app_name[:200] if opts.app_name else None,
            applied_version=self._served_version() or 0,
            interval=min(3600.0, opts.metrics_interval),
            closed=closed,
        )

    def _post(self, path: str, body: dict[str, Any], timeout: float = 5.0) -> bool:
        opts = self.options
        assert self._report_http is not None
        try:
            response = self._report_http.request(
                "POST", path, headers=auth_headers(opts.token), body=body, timeout=timeout
            )
        except StoreUnavailableError as exc:
            self._log_once(path, "flagrail %s: POST %s failed: %s", opts.environment, path, exc)
            return False
        if response.status_code >= 300:
            self._log_once(
                path + "status",
                "flagrail %s: POST %s answered %s: %s",
                opts.environment,
                path,
                response.status_code,
                response.text[:200],
            )
            return False
        return True

    def _send_instance_report(self) -> None:
        """Over HTTP only: the server ties an instance to the token that reports it."""
        self._post("/sdk/v1/instances", self._instance_report().to_dict())

    def _send_metrics(self, closed: bool = False) -> None:
        sink = self.sink
        if sink.served() is None and not closed:
            return
        # Each count is capped at the server's bound; the rest goes in a later report.
        current = dict(self._reported)
        flags: dict[str, dict[str, int]] = {}
        for key, (off, on) in sink.counts().items():
            was_off, was_on = self._reported.get(key, (0, 0))
            d_off = min(max(0, off - was_off), MAX_REPORTED_COUNT)
            d_on = min(max(0, on - was_on), MAX_REPORTED_COUNT)
            if d_off or d_on:
                flags[key] = {"on": d_on, "off": d_off}
                current[key] = (was_off + d_off, was_on + d_on)
        # The server takes whole, non-negative counts: send the whole part of each
        # increase and keep the fraction (and any decrease) for a later report.
        app_now = dict(self._reported_app)
        counters: dict[str, dict[str, int]] = {}
        for (flag, name), value in _flatten(sink.counters()).items():
            was = self._reported_app.get((flag, name), 0.0)
            delta = int(min(value - was, MAX_REPORTED_COUNT))
            if delta > 0:
                counters.setdefault(flag, {})[name] = delta
                app_now[(flag, name)] = was + delta
        body = {
            "environment": self.options.environment,
            "instance": self._instance_report(closed).to_dict(),
            "flags": flags,
            "counters": counters,
        }
        if self._post("/sdk/v1/metrics", body, timeout=2.0 if closed else 5.0):
            self._reported = current
            self._reported_app = app_now


def _flatten(counters: dict[str, dict[str, float]]) -> dict[tuple[str, str], float]:
    return {
        (flag, name): value for flag, named in counters.items() for name, value in named.items()
    }
