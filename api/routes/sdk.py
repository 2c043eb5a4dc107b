"""The SDK's side of the server: snapshot, stream, metrics, instance reports.

* ``GET /sdk/v1/snapshot?environment=E``: ``{"environment", "version", "flags"}``
  with a strong ETag (the version); ``If-None-Match`` gives a bodiless 304.
* ``GET /sdk/v1/stream?environment=E``: Server-Sent Events, a ``snapshot`` event
  then one ``change`` event per committed change, a heartbeat comment every
  ``settings.heartbeat_interval`` seconds; ``Last-Event-ID`` resumes from memory.
* ``POST /sdk/v1/metrics``: evaluation counts and app-named counters since the
  last report, with the instance's report (202). Every count is a non-negative
  integer of at most ``MAX_COUNT``, a report's counts sum to at most
  ``MAX_REPORT_TOTAL``; beyond either it is a 422 naming the field.
* ``POST /sdk/v1/instances``: an instance report alone (the applied version). An
  instance belongs to the token that first reported it, on every replica (checked in
  the database by ``TelemetryStore.claim_instance``, then in this replica's
  ``InstanceRegistry``): another token gets a 403, a move to another environment a
  422, a token beyond ``max_instances_per_token`` live instances (counted in the
  database) a 429.
* ``GET /admin/environments/{env}/clients``: live SDK instances (reader).
* ``GET /admin/reports/unused?since=30d``: flags no SDK evaluated since then (reader).

SDK routes take any token whose scope covers the environment (``client`` tokens
included); admin routes need ``reader`` or above. ``install`` wires the services
(broadcaster, instance registry, telemetry retention, Redis publisher and
subscriber) into an app.

Redis is not trusted with state: a ``changes:<env>`` message from Redis is only a
hint (``Broadcaster.hint``) that makes this replica read the environment's version
from the database; ``instances:*`` messages are not read at all (reports reach
other replicas through the database). See "What each channel trusts" in
``docs/security.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool

from api.deps import (
    Principal,
    Reader,
    SdkClient,
    service_dependency,
    store_dependency,
)
from api.errors import error_response
from api.schemas import unused_json
from api.service import AdminService
from flags.durations import parse_duration, parse_instant
from flags.errors import FlagrailError, ValidationError
from flags.model import FlagChanged, Snapshot, validate_environment_name, validate_flag_key
from flags.settings import Settings
from flags.store import FlagStore
from flags.store.sql import SqlFlagStore
from flags.store.telemetry import Reporter, TelemetryRetention, TelemetryStore
from flags.sync import InstanceReport
from flags.sync.broadcast import RESYNC, Broadcaster, InstanceRegistry
from flags.sync.redis_pubsub import environment_key, read_hint, verify_change
from flags.sync.sse import format_event

__all__ = [
    "SdkServerSettings",
    "SdkServices",
    "etag_matches",
    "install",
    "instance_owner",
    "kill_wait",
    "router",
    "snapshot_headers",
]

log = logging.getLogger("flagrail.api.sdk")

router = APIRouter(tags=["sdk"])

Store = Annotated[FlagStore, Depends(store_dependency)]
MAX_REPORTED_FLAGS = 10_000
MAX_COUNTERS_PER_FLAG = 50
# One count in one report (evaluations on/off, an app counter): a billion per
# report interval is beyond any real process and far inside a BIGINT total.
MAX_COUNT = 1_000_000_000
# All counts of one report together.
MAX_REPORT_TOTAL = 10**12
# sdk_instances.pid is a 32-bit INTEGER; applied_version a BIGINT.
MAX_PID = 2**31 - 1
MAX_VERSION = 2**63 - 1


class SdkServerSettings(BaseSettings):
    """SDK-serving knobs (``FLAGRAIL_<NAME>``), apart from the core ``Settings``."""

    model_config = SettingsConfigDict(env_prefix="FLAGRAIL_", extra="ignore")

    # Redis channel prefix: changes go to <prefix>changes:<env>.
    redis_prefix: str = "flagrail:"
    # Open SSE streams this replica accepts; beyond it a stream gets 503 (SDKs poll).
    max_streams: int = Field(default=10_000, ge=0)
    # Open SSE streams one token may hold on this replica; beyond it a 429.
    max_streams_per_token: int = Field(default=1_000, ge=0)
    # Items one stream may have queued before it counts as fallen behind (then it is
    # sent one snapshot instead of every change).
    stream_queue: int = Field(default=128, ge=1, le=100_000)
    # Live SDK instances one token may report (counted in the database); beyond it a 429.
    max_instances_per_token: int = Field(default=10_000, ge=1)
    # Seconds between database polls of environment versions (the no-Redis backstop).
    version_poll_interval: float = Field(default=0.5, gt=0)
    # Longest ?wait= a kill may ask for, in seconds.
    max_kill_wait: float = Field(default=30.0, gt=0)


@dataclass(frozen=True, slots=True)
class RenderedSnapshot:
    """One environment's snapshot at ``version``, as the JSON bytes SDKs receive."""

    version: int
    body: bytes
    keys: frozenset[str]
    # The same snapshot as one SSE ``snapshot`` event (what a new stream is sent first).
    frame: bytes = b""


def _render(snapshot: Snapshot) -> RenderedSnapshot:
    body = json.dumps(snapshot.to_dict(), separators=(",", ":")).encode()
    frame = b"id: %d\nevent: snapshot\ndata: %s\n\n" % (snapshot.version, body)
    return RenderedSnapshot(snapshot.version, body, frozenset(snapshot.flags), frame)


class SnapshotCache:
    """Rendered snapshots per environment, reused until the environment version moves.

    A snapshot read builds every flag state of the environment; rendering it once per
    version keeps a full ``GET /sdk/v1/snapshot`` (and each metrics report, which needs
    the known flag keys) at the cost of one indexed read. Thread-safe: entries are
    immutable and replaced whole; a racing older render never replaces a newer one.
    """

    def __init__(self) -> None:
        self._by_env: dict[str, RenderedSnapshot] = {}

    def get(self, store: FlagStore, env: str, version: int | None = None) -> RenderedSnapshot:
        """The snapshot of ``env``; ``version`` (if already read) saves a query.

        Raises ``EnvironmentNotFoundError`` for an unknown environment.
        """
        if version is None:
            version = store.get_environment(env).version
        cached = self._by_env.get(env)
        if cached is not None and cached.version == version:
            return cached
        return self.render(store.snapshot(env))

    def newest(self, env: str) -> RenderedSnapshot | None:
        """The newest render held for ``env``, if any; no I/O."""
        return self._by_env.get(env)

    def cached(self, env: str, version: int) -> RenderedSnapshot | None:
        """The render of ``env`` at exactly ``version``, if held; no I/O."""
        cached = self._by_env.get(env)
        return cached if cached is not None and cached.version == version else None

    def render(self, snapshot: Snapshot) -> RenderedSnapshot:
        """``snapshot`` rendered (reusing the held render of the same version); kept
        unless a newer version is held already."""
        cached = self.cached(snapshot.environment, snapshot.version)
        if cached is not None:
            return cached
        rendered = _render(snapshot)
        current = self._by_env.get(snapshot.environment)
        if current is None or current.version < rendered.version:
            self._by_env[snapshot.environment] = rendered
        return rendered


class ChangeFrames:
    """SSE ``change`` frames of recent changes, rendered once per change.

    Every stream of an environment sends the same bytes for a change; rendering them
    once instead of once per stream is what lets one replica fan a change out to
    10,000 streams. Keyed by (environment, version), which names one change. Holds
    the last ``size`` frames. Used on the event loop; safe from threads too (a race
    renders a frame twice, the same bytes).
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._frames: dict[tuple[str, int], bytes] = {}

    def frame(self, event: FlagChanged) -> bytes:
        key = (event.environment, event.version)
        frame = self._frames.get(key)
        if frame is None:
            frame = _change_frame(event)
            self._frames[key] = frame
            while len(self._frames) > self.size:
                self._frames.pop(next(iter(self._frames)), None)
        return frame


@dataclass
class SdkServices:
    """What the SDK routes use, at ``app.state.sdk``."""

    settings: SdkServerSettings
    telemetry: TelemetryStore
    broadcaster: Broadcaster
    registry: InstanceRegistry
    retention: TelemetryRetention | None = None
    publisher: Any = None
    subscriber: Any = None
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)
    frames: ChangeFrames = field(default_factory=ChangeFrames)
    # Per environment: one snapshot read at a time for streams (the others reuse it).
    stream_reads: dict[str, asyncio.Lock] = field(default_factory=dict)
    unreadable_hints: int = 0
    # FLAGRAIL_SIGNING_KEY: Redis change messages are signed and verified (else hints).
    signing_secret: bytes | None = None
    # Redis messages dropped for a missing or wrong signature.
    rejected: int = 0

    def announce(self, report: InstanceReport, owner: str) -> bool:
        """Record a report heard over HTTP with the token ``owner``; other replicas
        read it from the database. False: the token holds too many instances.

        Ownership is checked in the database first (``TelemetryStore.claim_instance``:
        the first token that reported the instance, on any replica, owns it), then in
        this replica's memory. Raises ``ForbiddenError`` / ``ValidationError`` (see
        ``claim_instance``), ``StoreUnavailableError``."""
        if not self.telemetry.claim_instance(
            report, owner, max_per_token=self.settings.max_instances_per_token
        ):
            return False
        return self.registry.claim(report, owner)


def install(
    app: FastAPI,
    settings: Settings,
    store: SqlFlagStore,
    sdk_settings: SdkServerSettings | None = None,
) -> SdkServices:
    """Wire SDK serving into ``app``: ``app.state.sdk``, ``app.state.telemetry``, the
    services (started by the lifespan) and the store listeners. No I/O here."""
    sdk_settings = sdk_settings or SdkServerSettings()
    telemetry = TelemetryStore(store.engine)
    broadcaster = Broadcaster(
        store,
        db_poll_interval=sdk_settings.version_poll_interval,
        # Without Redis no message will announce another replica's (or worker's) change:
        # a version the database shows ahead is sent after 0.1 s (time for this replica's
        # own commit to reach its listener), not held for a message that will not come.
        behind_hold=None if settings.redis_url else 0.1,
    )
    registry = InstanceRegistry(telemetry, max_per_token=sdk_settings.max_instances_per_token)
    retention = TelemetryRetention(
        telemetry,
        settings.telemetry_retention,
        settings.telemetry_rollup_after,
        interval=settings.telemetry_prune_interval,
    )
    services = SdkServices(sdk_settings, telemetry, broadcaster, registry, retention)
    store.listeners.append(broadcaster.publish)
    app.state.services.extend([broadcaster, registry, retention])
    if settings.signing_key:
        services.signing_secret = settings.signing_key.encode("utf-8")
    if settings.redis_url:
        from flags.sync.redis_pubsub import RedisPublisher, RedisSubscriber

        prefix = sdk_settings.redis_prefix
        services.publisher = RedisPublisher(
            settings.redis_url, prefix, signing_secret=services.signing_secret
        )
        store.listeners.append(services.publisher.publish_changes)
        services.subscriber = RedisSubscriber(
            settings.redis_url,
            _redis_handler(services),
            patterns=[f"{prefix}changes:*"],
            name="flagrail-redis-server",
        )
        app.state.services.extend([services.publisher, services.subscriber])
    app.state.sdk = services
    app.state.telemetry = telemetry
    return services


def _redis_handler(services: SdkServices) -> Any:
    """Redis ``changes:<env>`` messages: with a signing key, only verified changes are
    applied (others dropped and counted in ``rejected``); without one, hints only:
    whoever can PUBLISH to Redis can make this replica read a version from its
    database, nothing more."""
    changes = f"{services.settings.redis_prefix}changes:"
    secret = services.signing_secret

    def handle(channel: str, data: bytes) -> None:
        if not channel.startswith(changes):
            return
        env = channel[len(changes) :]
        if secret is not None:
            event = verify_change(data, env, environment_key(secret, env))
            if event is None:
                services.rejected += 1
                log.debug("unsigned or wrongly signed change on %s dropped", channel)
                return
            services.broadcaster.publish([event])
            return
        version = read_hint(data, env)
        if version is None:
            services.unreadable_hints += 1
            log.debug("unreadable change hint on %s dropped", channel)
            return
        services.broadcaster.hint(env, version)

    return handle


def _services(request: Request) -> SdkServices:
    services = getattr(request.app.state, "sdk", None)
    if services is None:  # an app built without install(): a wiring bug, not bad input
        raise RuntimeError("SDK services are not installed on this app")
    return services  # type: ignore[no-any-return]


async def _services_dependency(request: Request) -> SdkServices:
    """``_services`` as an async dependency: I/O-free, so it runs on the event loop
    instead of costing a thread-pool hop per request."""
    return _services(request)


Services = Annotated[SdkServices, Depends(_services_dependency)]


def _sdk_environment(principal: Principal, environment: str) -> str:
    validate_environment_name(environment)
    principal.check_env(environment)
    return environment


def etag_matches(header: str | None, version: int) -> bool:
    """``If-None-Match`` (``header``) names ``version`` (or is ``*``)."""
    if not header:
        return False
    for part in header.split(","):
        tag = part.strip()
        if tag == "*" or tag == f'"{version}"':
            return True
    return False


# ---------------------------------------------------------------------- snapshot
def snapshot_headers(services: SdkServices, env: str) -> dict[str, str]:
    """The headers of every snapshot answer (200 and 304), but its ETag."""
    headers = {"Cache-Control": "no-cache"}
    if services.publisher is not None:
        # SDKs with Redis trust the channel only when the server publishes on it.
        headers["X-Flagrail-Publishes"] = f"redis {services.settings.redis_prefix}"
        if services.signing_secret is not None:
            # This environment's verify key (not the secret), to this token only.
            headers["X-Flagrail-Verify-Key"] = environment_key(services.signing_secret, env).hex()
    return headers


@router.get("/sdk/v1/snapshot")
async def get_snapshot(
    request: Request,
    services: Services,
    principal: Principal = SdkClient,
    environment: str = Query(..., max_length=40),
    if_none_match: str | None = Header(default=None, max_length=200),
    min_version: int | None = Query(
        default=None,
        ge=0,
        le=MAX_VERSION,
        description="The version a Redis hint announced: the answer is read from the "
        "database unless this replica knows a version at least this new.",
    ),
) -> Response:
    """The environment's flags at one version; 304 when ``If-None-Match`` names it.

    Most polls are answered by ``api.fastpath`` before they reach this route (from
    memory: the token cache, the broadcaster's known version, the rendered snapshot);
    this route is the same answer read from the database."""
    env = _sdk_environment(principal, environment)
    headers = snapshot_headers(services, env)
    store: FlagStore = request.app.state.store
    # One thread-pool hop for the database (the version read; the render on a miss).
    rendered = await run_in_threadpool(_current_snapshot, services, store, env, if_none_match)
    if isinstance(rendered, int):
        return Response(status_code=304, headers={**headers, "ETag": f'"{rendered}"'})
    return Response(
        rendered.body,
        media_type="application/json",
        headers={**headers, "ETag": f'"{rendered.version}"'},
    )


def _current_snapshot(
    services: SdkServices, store: FlagStore, env: str, if_none_match: str | None
) -> RenderedSnapshot | int:
    """The environment's version when ``If-None-Match`` names it (a 304), else its
    rendered snapshot. Blocking (database): run in the thread pool."""
    current = store.get_environment(env).version
    if if_none_match and etag_matches(if_none_match, current):
        return current
    return services.snapshots.get(store, env, current)


# ---------------------------------------------------------------------- stream
_hooked_signals: set[int] = set()


def end_streams_on_signal(broadcaster: Broadcaster) -> None:
    """Chain SIGINT/SIGTERM so open streams end at once and a graceful shutdown is not
    held up by them (uvicorn waits for open responses). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        if sig in _hooked_signals:
            continue
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            broadcaster.shutdown_streams()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)
        _hooked_signals.add(sig)


def parse_last_event_id(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 18:
        return None
    return int(value.strip())


def _change_frame(event: FlagChanged) -> bytes:
    state = event.state.to_dict() if event.state is not None else None
    return format_event(
        "change", {"version": event.version, "flag": event.flag, "state": state}, event.version
    )


async def stream_snapshot(services: SdkServices, store: FlagStore, env: str) -> RenderedSnapshot:
    """The snapshot a stream starts (or resyncs) with, at least at the version this
    replica has delivered (the stream is subscribed already, so later changes reach
    it). Served from the snapshot cache without I/O when it holds that version;
    otherwise one database read in the thread pool, shared by the streams that wait
    on the same environment meanwhile (a reconnect storm reads once, not per stream).
    """
    known = services.broadcaster.latest(env)
    if known is not None and (hit := services.snapshots.cached(env, known)) is not None:
        return hit
    lock = services.stream_reads.setdefault(env, asyncio.Lock())
    async with lock:
        known = services.broadcaster.latest(env)
        if known is not None and (hit := services.snapshots.cached(env, known)) is not None:
            return hit
        snapshot = await run_in_threadpool(store.snapshot, env)
        return services.snapshots.render(snapshot)


@router.get("/sdk/v1/stream")
async def stream(
    request: Request,
    services: Services,
    principal: Principal = SdkClient,
    environment: str = Query(..., max_length=40),
    last_event_id: str | None = Header(default=None, alias="Last-Event-ID", max_length=40),
) -> Response:
    """Server-Sent Events of one environment (see the module docstring)."""
    env = _sdk_environment(principal, environment)
    store: FlagStore = request.app.state.store
    broadcaster = services.broadcaster
    if broadcaster.latest(env) is None:  # not seen in the database yet: 404 or read it
        await run_in_threadpool(store.get_environment, env)
    limit = services.settings.max_streams
    per_token = services.settings.max_streams_per_token
    if broadcaster.closing or broadcaster.stream_count() >= limit:
        response = error_response(
            503,
            "stream_unavailable",
            f"this replica serves at most {limit} streams; poll /sdk/v1/snapshot",
            "environment",
        )
        response.headers["Retry-After"] = "5"
        return response
    end_streams_on_signal(broadcaster)
    heartbeat = float(request.app.state.settings.heartbeat_interval)
    sub = broadcaster.subscribe(
        env,
        asyncio.get_running_loop(),
        owner=principal.token_id or principal.name,
        max_per_owner=per_token,
        max_items=services.settings.stream_queue,
    )
    if sub is None:
        response = error_response(
            429,
            "too_many_streams",
            f"this token holds {per_token} streams on this replica already; close one "
            "or poll /sdk/v1/snapshot",
            "environment",
            limit=per_token,
        )
        response.headers["Retry-After"] = "5"
        return response
    resume = parse_last_event_id(last_event_id)

    frames = services.frames

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b": connected\n\n"
            replay = broadcaster.replay(env, resume) if resume is not None else None
            if replay is not None:
                sent = resume
                for event in replay:
                    yield frames.frame(event)
                    sent = event.version
            else:
                rendered = await stream_snapshot(services, store, env)
                yield rendered.frame
                sent = rendered.version
            assert sent is not None
            while True:
                item = await sub.get(heartbeat)
                if item is False:
                    yield b": heartbeat\n\n"
                elif item is None:
                    return
                elif item is RESYNC:  # fell behind: one snapshot instead of the backlog
                    rendered = await stream_snapshot(services, store, env)
                    if rendered.version >= sent:
                        yield rendered.frame
                        sent = rendered.version
                elif isinstance(item, Snapshot):
                    if item.version >= sent:
                        yield services.snapshots.render(item).frame
                        sent = item.version
                elif isinstance(item, FlagChanged):
                    if item.version <= sent:
                        continue
                    if item.version == sent + 1:
                        yield frames.frame(item)
                        sent = item.version
                    else:  # cannot happen with an ordered broadcaster; heal anyway
                        rendered = await stream_snapshot(services, store, env)
                        yield rendered.frame
                        sent = rendered.version
        except FlagrailError as exc:
            log.warning("stream of %s ended: %s", env, exc)
        finally:
            broadcaster.unsubscribe(sub)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---------------------------------------------------------------------- reports
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class InstanceBody(Strict):
    instance_id: str = Field(min_length=1, max_length=64)
    environment: str = Field(min_length=1, max_length=40)
    host: str = Field(min_length=1, max_length=255)
    pid: int = Field(ge=0, le=MAX_PID)
    app: str | None = Field(default=None, max_length=200)
    applied_version: int = Field(ge=0, le=MAX_VERSION)
    interval: float = Field(default=10.0, gt=0, le=3600)
    closed: bool = False

    def to_report(self) -> InstanceReport:
        return InstanceReport(
            self.instance_id,
            self.environment,
            self.host,
            self.pid,
            self.app,
            self.applied_version,
            self.interval,
            self.closed,
        )


Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]


class FlagCounts(Strict):
    on: Count = 0
    off: Count = 0


class MetricsBody(Strict):
    environment: str = Field(min_length=1, max_length=40)
    instance: InstanceBody | None = None
    flags: dict[str, FlagCounts] = Field(default_factory=dict, max_length=MAX_REPORTED_FLAGS)
    # App-named counters: whole non-negative counts (an SDK sends whole increments).
    counters: dict[str, dict[str, Count]] = Field(
        default_factory=dict, max_length=MAX_REPORTED_FLAGS
    )


def _check_total(body: MetricsBody) -> None:
    """Raises ``ValidationError`` when a report's counts sum beyond ``MAX_REPORT_TOTAL``."""
    total = sum(c.on + c.off for c in body.flags.values())
    if total > MAX_REPORT_TOTAL:
        raise ValidationError(
            f"flags counts sum to {total}; a report may hold at most {MAX_REPORT_TOTAL}",
            field="flags",
        )
    total += sum(v for named in body.counters.values() for v in named.values())
    if total > MAX_REPORT_TOTAL:
        raise ValidationError(
            f"flags and counters sum to {total}; a report may hold at most {MAX_REPORT_TOTAL}",
            field="counters",
        )


def _check_counters(counters: dict[str, dict[str, int]]) -> None:
    for flag, named in counters.items():
        validate_flag_key(flag, "counters")
        if len(named) > MAX_COUNTERS_PER_FLAG:
            raise ValidationError(
                f"counters.{flag} holds {len(named)} names; at most {MAX_COUNTERS_PER_FLAG}",
                field=f"counters.{flag}",
            )
        for name in named:
            if not 0 < len(name) <= 100 or not name.isprintable():
                raise ValidationError(
                    f"counter names must be 1 to 100 printable characters, got {name!r:.40}",
                    field=f"counters.{flag}",
                )


def instance_owner(principal: Any) -> str:
    """The identity an instance belongs to: the token's id (its name for the CLI)."""
    return str(principal.token_id or principal.name)


def _too_many_instances(services: SdkServices) -> Response:
    limit = services.settings.max_instances_per_token
    response = error_response(
        429,
        "too_many_instances",
        f"this token reports {limit} live instances already",
        "instance_id",
        limit=limit,
    )
    response.headers["Retry-After"] = "30"
    return response


@router.post("/sdk/v1/metrics", status_code=202, response_model=None)
def post_metrics(
    body: MetricsBody, store: Store, services: Services, principal: Principal = SdkClient
) -> dict[str, Any] | Response:
    """Add an SDK's evaluation counts and counters since its last report. Flags the
    environment does not hold (unknown or archived) are dropped, not stored."""
    env = _sdk_environment(principal, body.environment)
    if body.instance is not None and body.instance.environment != env:
        raise ValidationError(
            "instance.environment must equal environment", field="instance.environment"
        )
    for key in body.flags:
        validate_flag_key(key, "flags")
    _check_counters(body.counters)
    _check_total(body)
    if body.instance is not None and not services.announce(
        body.instance.to_report(), instance_owner(principal)
    ):
        return _too_many_instances(services)
    known = services.snapshots.get(store, env).keys if body.flags or body.counters else frozenset()
    evaluations = {
        key: (c.off, c.on) for key, c in body.flags.items() if key in known and (c.on or c.off)
    }
    counters = {flag: named for flag, named in body.counters.items() if flag in known}
    reporter = Reporter(
        f"{principal.name} ({principal.token_id})",
        body.instance.instance_id if body.instance is not None else None,
        instance_owner(principal),
    )
    services.telemetry.record_metrics(env, evaluations, counters, reporter=reporter)
    return {
        "accepted": True,
        "flags": len(evaluations),
        "dropped": len(body.flags) - len(evaluations) + len(body.counters) - len(counters),
    }


@router.post("/sdk/v1/instances", status_code=202, response_model=None)
async def post_instance(
    body: InstanceBody, services: Services, principal: Principal = SdkClient
) -> dict[str, Any] | Response:
    """Record which version an instance applied (kill confirmation). Every SDK process
    sends one after each change it applies: on the event loop when the instance's
    owner is cached (no I/O), else in the thread pool (one database read)."""
    _sdk_environment(principal, body.environment)
    report, owner = body.to_report(), instance_owner(principal)
    if services.telemetry.owner_known(report.instance_id):
        accepted = services.announce(report, owner)
    else:
        accepted = await run_in_threadpool(services.announce, report, owner)
    if not accepted:
        return _too_many_instances(services)
    return {"accepted": True}


# ---------------------------------------------------------------------- admin
@router.get("/admin/environments/{env}/clients")
def list_clients(
    env: str,
    service: Annotated[AdminService, Depends(service_dependency)],
    principal: Principal = Reader,
) -> dict[str, Any]:
    """Live SDK instances of ``env``: heard from within three report intervals."""
    return {"items": service.clients(principal, env)}


@router.get("/admin/reports/unused")
def unused_report(
    service: Annotated[AdminService, Depends(service_dependency)],
    principal: Principal = Reader,
    since: str = Query(default="30d", max_length=64),
) -> dict[str, Any]:
    """Live flags created before ``since`` that no SDK evaluated since then, in the
    environments of the token."""
    at = parse_instant(since, "since")
    return unused_json(at, service.unused(principal, at))


def kill_wait(request: Request, wait: str | None) -> float | None:
    """Seconds of a kill's ``?wait=`` (None without one). Validate it before the kill.

    Raises ``ValidationError`` (field ``wait``) for a malformed or too long wait.
    """
    if wait is None:
        return None
    seconds = parse_duration(wait, "wait").total_seconds()
    limit = _services(request).settings.max_kill_wait
    if seconds > limit:
        raise ValidationError(f"wait must be at most {limit:g}s, got {wait!r}", field="wait")
    return seconds
