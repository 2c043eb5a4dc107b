"""The exam platform: a small FastAPI service with API-key authentication, like the incident's.

Every request names its tenant in the path and carries ``Authorization: Bearer
<api key>``. The key's record (tenant, scopes, revoked) comes from the key
database through a ``LayeredCache`` named ``auth.cache``: an in-memory layer
(flag ``auth.cache.l1``) over a Redis layer (flag ``auth.cache.l2``, the layer
being rolled out) over the loader (the database). A valid key of that tenant
with the endpoint's scope gets in; any other key gets 401 (403 for a missing
scope).

Endpoints::

    GET  /t/{tenant}/exams         scope exams:read
    POST /t/{tenant}/exams         scope exams:write
    GET  /t/{tenant}/dashboard     scope dashboard:read
    GET  /healthz                  {"status", "ready"} (ready: flags loaded)
    GET  /metrics                  Prometheus (cache layers and guard included)
    POST /_demo/fault              {"fault": "corrupt-bytes"|...|"none"}      demo admin only
    POST /_demo/keys/{id}/revoke   revoke a key; {"committed_at"}; then invalidate it  demo admin
    GET  /_demo/state              what the scenario measures in this process    demo admin

Answers carry ``X-Auth-Source``: ``loader`` when this request's key was read from
the database, ``cache`` when a cache layer answered; and ``X-Decided-At``, the
unix time the process decided (what revocation latency is measured against). Revocations reach every
process twice over: the cache's pub/sub invalidation, and each process following
the key database's event table every 25 ms (so they still arrive while Redis is
down). Run one process with ``python -m api.demo.app`` and the
``EXAM_*`` environment of ``ServiceConfig``.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import hmac
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import MISSING, dataclass, fields
from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import errors
from api.demo.faults import (
    FaultSwitch,
    FaultyRedisLayer,
    FaultySerializer,
    faulty_clients,
    parse_fault,
)
from api.demo.keys import KeyRecord, KeyStore, hash_key
from flags.cache import CircuitBreaker, Guard, LayeredCache, MemoryLayer
from flags.client import FlagClient
from flags.errors import ForbiddenError, UnauthenticatedError
from flags.model import validate_tenant

__all__ = ["CACHE_NAME", "L1_FLAG", "L2_FLAG", "ExamPlatform", "ServiceConfig", "create_app"]

log = logging.getLogger("exam_platform")

CACHE_NAME = "auth.cache"
L1_FLAG = "auth.cache.l1"
L2_FLAG = "auth.cache.l2"
ENV_PREFIX = "EXAM_"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One service process. ``to_env``/``from_env`` carry it to a child process as
    ``EXAM_<FIELD>`` variables."""

    name: str
    port: int
    keys_url: str
    redis_url: str
    flagrail_url: str
    client_token: str
    guard_token: str
    demo_secret: str
    cache_secret: str  # hex; the L2 envelopes' checksum key
    # Prefix of every Redis key and channel of the run (flag changes and the cache),
    # so a shared Redis never mixes the demo with anything else.
    redis_prefix: str = "flagrail:"
    environment: str = "production"
    simulate_outage: bool = False
    verify_share: float = 1.0
    l1_ttl: float = 2.0
    l2_ttl: float = 4.0
    guard_window: float = 1.0
    guard_min_samples: int = 5
    guard_max_mismatch_rate: float = 0.1
    guard_max_corrupt_rate: float = 0.01
    guard_max_error_rate: float = 0.5
    breaker_failures: int = 3
    # Socket and connect timeout of the cache's Redis calls (flagrail's default: 50 ms).
    redis_timeout: float = 0.025
    host: str = "127.0.0.1"

    def to_env(self) -> dict[str, str]:
        return {
            ENV_PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(ServiceConfig)
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceConfig:
        """Read every ``EXAM_*`` field. Raises ``KeyError`` naming a missing required one
        and ``ValueError`` for a malformed number."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                if f.default is MISSING:
                    raise KeyError(ENV_PREFIX + f.name.upper())
                continue
            kind = f.type if isinstance(f.type, str) else f.type.__name__
            if kind == "int":
                values[f.name] = int(raw)
            elif kind == "float":
                values[f.name] = float(raw)
            elif kind == "bool":
                values[f.name] = raw.lower() in ("1", "true", "yes")
            else:
                values[f.name] = raw
        return cls(**values)


class _AuthSource:
    """Set by the loader when it runs for the current request (the context is copied
    into the loader's thread, so the object is shared, not the variable)."""

    __slots__ = ("loaded",)

    def __init__(self) -> None:
        self.loaded = False


_auth_source: contextvars.ContextVar[_AuthSource | None] = contextvars.ContextVar(
    "exam_auth_source", default=None
)


class ExamPlatform:
    """The service's moving parts: flag client, key store, cache with its guard, the
    fault switch, and two threads (revocation follower, measurement monitor).

    Constructing it does no I/O; ``start()`` connects and blocks until the flags
    are loaded (at most ``ready_timeout`` seconds); ``close()`` stops everything.
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.keys = KeyStore(config.keys_url)
        self.switch = FaultSwitch(simulate_outage=config.simulate_outage)
        self.client: FlagClient | None = None
        self.cache: LayeredCache | None = None
        self.l1: MemoryLayer | None = None
        self.guard: Guard | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # Measured by the monitor thread (unix times), read by GET /_demo/state.
        # bad_reads: the first increments of the L2 layer's bad-read counters,
        # as (unix time, "counter +n, ...").
        self.bad_reads: list[tuple[float, str]] = []
        self.layer_was_live = False
        self.layer_off_at: float | None = None
        self.layer_off_by: str | None = None
        self.guard_tripped_at: float | None = None
        self.revocations_followed = 0

    # ----------------------------------------------------------------- lifecycle
    def start(self, ready_timeout: float = 15.0) -> None:
        c = self.config
        self.client = FlagClient(
            c.flagrail_url,
            c.client_token,
            c.environment,
            redis_url=c.redis_url,
            poll_interval=1.0,
            metrics_interval=2.0,
            app_name=f"exam-platform/{c.name}",
            channel_prefix=c.redis_prefix,
        )
        self.client.wait_until_ready(ready_timeout)
        sync, aclient = faulty_clients(
            c.redis_url,
            self.switch,
            socket_timeout=c.redis_timeout,
            connect_timeout=c.redis_timeout,
        )
        l2 = FaultyRedisLayer(
            c.redis_url,
            fault_switch=self.switch,
            secret=bytes.fromhex(c.cache_secret),
            ttl=c.l2_ttl,
            client=sync,
            async_client=aclient,
            serializer=FaultySerializer(self.switch),
            breaker=CircuitBreaker(failure_threshold=c.breaker_failures),
            prefix=f"{c.redis_prefix}cache:",
            socket_timeout=c.redis_timeout,
            connect_timeout=c.redis_timeout,
        )
        self.guard = Guard(
            c.flagrail_url,
            c.guard_token,
            environment=c.environment,
            window=c.guard_window,
            min_samples=c.guard_min_samples,
            max_mismatch_rate=c.guard_max_mismatch_rate,
            max_corrupt_rate=c.guard_max_corrupt_rate,
            max_error_rate=c.guard_max_error_rate,
        )
        self.l1 = MemoryLayer(max_entries=100_000, ttl=c.l1_ttl)
        self.cache = LayeredCache(
            CACHE_NAME,
            [self.l1, l2],
            loader=self._load,
            flags=self.client,
            guard=self.guard,
            verify_share=c.verify_share,
            owner="exam-platform",
        ).start(wait=2.0)
        for target, name in ((self._follow_revocations, "revocations"), (self._monitor, "monitor")):
            thread = threading.Thread(target=target, name=f"exam-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        if self.cache is not None:
            self.cache.close()
        if self.guard is not None:
            self.guard.close(timeout=2)
        if self.client is not None:
            self.client.close()
        self.keys.close()

    @property
    def ready(self) -> bool:
        return self.client is not None and self.client.ready and self.cache is not None

    # ----------------------------------------------------------------- auth
    async def _load(self, key_hash: str) -> KeyRecord | None:
        """The loader: the key database, on a worker thread (SQLite blocks).

        Async on purpose: the cache then runs its verifications as tasks on the
        event loop, many at a time, instead of one by one on its single background
        thread, so a verdict on a wrong entry comes in milliseconds even at
        ``verify_share=1.0``. Marks the current request as answered by the loader.
        """
        source = _auth_source.get()
        if source is not None:
            source.loaded = True
        return await asyncio.to_thread(self.keys.lookup, key_hash)

    async def authenticate(self, request: Request, tenant: str, scope: str) -> KeyRecord:
        """The key's record if it may use ``scope`` of ``tenant``.

        Raises ``UnauthenticatedError`` (401) for a missing, unknown, revoked or
        other tenant's key, ``ForbiddenError`` (403) without the scope.
        """
        validate_tenant(tenant, "tenant")
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise UnauthenticatedError(
                "Authorization must be 'Bearer <api key>'", field="Authorization"
            )
        assert self.cache is not None
        source = _AuthSource()
        token = _auth_source.set(source)
        try:
            record = await self.cache.aget(hash_key(secret.strip()), tenant=tenant)
        finally:
            # Read before any verification task of this hit runs (it shares the context).
            request.state.auth_source = "loader" if source.loaded else "cache"
            request.state.decided_at = time.time()
            _auth_source.reset(token)
        if not isinstance(record, KeyRecord) or record.revoked or record.tenant != tenant:
            raise UnauthenticatedError(
                "unknown or revoked API key for this tenant", field="Authorization"
            )
        if scope not in record.scopes:
            raise ForbiddenError(f"this API key lacks the scope {scope!r}", field="Authorization")
        return record

    def revoke(self, key_id: str) -> tuple[str, float]:
        """Revoke ``key_id`` in the database; returns its hash and when the revocation
        committed (unix time). The caller then calls ``invalidate``. Raises
        ``NotFoundError``."""
        return self.keys.revoke(key_id)

    def forget_here(self, key_hash: str) -> None:
        """Drop the key from this process's memory layer now (no I/O)."""
        if self.l1 is not None:
            self.l1.delete(key_hash)

    def invalidate(self, key_hash: str) -> None:
        """Drop the key from this process's memory, then from Redis and (pub/sub)
        every other process's memory. With Redis slow this takes up to a few timeouts,
        which is why the revoke endpoint answers first and invalidates right after."""
        assert self.cache is not None
        self.cache.invalidate(key_hash)

    # ----------------------------------------------------------------- threads
    def _follow_revocations(self) -> None:
        """Every 25 ms, invalidate keys revoked since the last look (by any process)."""
        try:
            last = self.keys.last_event_id()
        except Exception:
            log.exception("cannot read the key events; revocations rely on pub/sub alone")
            return
        while not self._stop.wait(0.025):
            try:
                events = self.keys.events_since(last)
            except Exception:  # the key database is busy or gone: try again next tick
                log.warning("reading key events failed", exc_info=True)
                continue
            for event_id, key_hash in events:
                last = event_id
                if self.cache is not None:
                    self.cache.invalidate(key_hash)
                self.revocations_followed += 1

    def _monitor(self) -> None:
        """Every 5 ms: note bad L2 reads, the guard's trip, and the layer going off.

        Reads plain counters and one flag state: a few microseconds per look.
        """
        assert self.cache is not None and self.client is not None and self.guard is not None
        stats = self.cache.metrics.layers["l2"]
        seen = _bad_reads(stats)
        while not self._stop.wait(0.005):
            now = time.time()
            if len(self.bad_reads) < 20:
                bad = _bad_reads(stats)
                if bad != seen:
                    what = ", ".join(f"{k} +{v - seen[k]}" for k, v in bad.items() if v > seen[k])
                    self.bad_reads.append((now, what))
                    seen = bad
            breached = self.guard.stats.breaches.get(L2_FLAG, 0) > 0
            if breached and self.guard_tripped_at is None:
                self.guard_tripped_at = now
            state = self.client.state(L2_FLAG)
            killed = state is not None and state.killed
            if state is not None and state.enabled and not killed and not breached:
                self.layer_was_live = True
            if self.layer_was_live and self.layer_off_at is None and (killed or breached):
                self.layer_off_at = now
                self.layer_off_by = "guard bypass" if breached else "kill seen"

    def state(self) -> dict[str, Any]:
        assert self.client is not None and self.cache is not None and self.guard is not None
        l2 = self.client.state(L2_FLAG)
        return {
            "name": self.config.name,
            "pid": os.getpid(),
            "fault": self.switch.to_dict(),
            "flag": l2.to_dict() if l2 is not None else None,
            "flag_source": self.client.stats().get("source"),
            "bad_reads": self.bad_reads,
            "guard_tripped_at": self.guard_tripped_at,
            "guard_kills": [r.outcome for r in self.guard.results],
            "layer_off_at": self.layer_off_at,
            "layer_off_by": self.layer_off_by,
            "revocations_followed": self.revocations_followed,
            "cache": self.cache.stats(),
        }


_BAD_READS = (
    "corrupt_format",
    "corrupt_checksum",
    "corrupt_payload",
    "mismatch_verify",
    "mismatch_shadow",
    "mismatch_write",
    "errors",
)


def _bad_reads(stats: Any) -> dict[str, int]:
    """The bad-read counters of one ``flags.cache.metrics.LayerStats`` (0 for a counter
    this version of the cache does not keep)."""
    return {name: int(getattr(stats, name, 0)) for name in _BAD_READS}


class _AuthSourceHeader:
    """ASGI middleware: on every answer whose request authenticated, ``X-Auth-Source``
    (``loader`` or ``cache``) and ``X-Decided-At`` (unix time of the decision)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_source(message: Message) -> None:
            if message["type"] == "http.response.start":
                state = scope.get("state", {})
                source = state.get("auth_source")
                if source:
                    headers = list(message.get("headers", []))
                    headers.append((b"x-auth-source", source.encode()))
                    headers.append((b"x-decided-at", repr(state.get("decided_at", 0.0)).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_source)


class ExamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    title: str = Field(min_length=1, max_length=200)


class FaultBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    fault: str | None = Field(default=None, max_length=40)


def create_app(config: ServiceConfig, platform: ExamPlatform | None = None) -> FastAPI:
    """The service. Constructing it does no I/O; the lifespan starts ``platform``."""
    platform = platform or ExamPlatform(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(platform.start)
        # Everything alive now (imports, app, clients) lives as long as the process:
        # keep it out of the cyclic collector, whose full passes over it would stall
        # the event loop for 50-80 ms every few seconds.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await run_in_threadpool(platform.close)

    app = FastAPI(title="exam platform (flagrail demo)", lifespan=lifespan)
    app.state.platform = platform
    errors.install(app)
    app.add_middleware(_AuthSourceHeader)

    def demo_admin(request: Request) -> None:
        header = request.headers.get("authorization", "")
        secret = header.removeprefix("Bearer ").strip()
        if not hmac.compare_digest(secret.encode(), config.demo_secret.encode()):
            raise UnauthenticatedError(
                "demo admin endpoints need the demo secret", field="Authorization"
            )

    DemoAdmin = Depends(demo_admin)

    @app.get("/t/{tenant}/exams")
    async def list_exams(tenant: str, request: Request) -> dict[str, Any]:
        record = await platform.authenticate(request, tenant, "exams:read")
        return {
            "tenant": record.tenant,
            "exams": [
                {"id": f"{tenant}-e1", "title": "Mathematics B", "starts": "09:00"},
                {"id": f"{tenant}-e2", "title": "History", "starts": "11:00"},
            ],
        }

    @app.post("/t/{tenant}/exams", status_code=201)
    async def schedule_exam(tenant: str, body: ExamCreate, request: Request) -> dict[str, Any]:
        record = await platform.authenticate(request, tenant, "exams:write")
        return {"tenant": record.tenant, "id": f"{tenant}-{time.time_ns()}", "title": body.title}

    @app.get("/t/{tenant}/dashboard")
    async def dashboard(tenant: str, request: Request) -> dict[str, Any]:
        record = await platform.authenticate(request, tenant, "dashboard:read")
        return {"tenant": record.tenant, "exams_running": 2, "students_active": 57}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "ready": platform.ready}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/_demo/fault", dependencies=[DemoAdmin])
    def set_fault(body: FaultBody) -> dict[str, Any]:
        platform.switch.set(parse_fault(body.fault))
        return {"pid": os.getpid(), **platform.switch.to_dict()}

    @app.post("/_demo/keys/{key_id}/revoke", dependencies=[DemoAdmin])
    def revoke_key(key_id: str, background: BackgroundTasks) -> dict[str, Any]:
        key_hash, committed_at = platform.revoke(key_id)
        platform.forget_here(key_hash)
        background.add_task(platform.invalidate, key_hash)
        return {"key_id": key_id, "committed_at": committed_at}

    @app.get("/_demo/state", dependencies=[DemoAdmin])
    def demo_state() -> dict[str, Any]:
        return platform.state()

    return app


def main() -> None:
    """Run one service process from the ``EXAM_*`` environment."""
    import faulthandler
    import signal

    import uvicorn

    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: every thread's stack to the log
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
    )
    config = ServiceConfig.from_env()
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        http="h11",
        loop="asyncio",
    )


if __name__ == "__main__":
    main()
