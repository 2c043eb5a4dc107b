"""``create_app(settings)``: the flagrail HTTP service.

Constructing the app does no I/O. ``app.state.service`` is the ``AdminService``
every admin route calls (on the store, the plans, the SDK telemetry and the
instance registry). The lifespan starts the services registered in
``app.state.services`` (objects with ``start()`` and ``close()``), in order, and
closes them in reverse.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api import console, errors
from api.console import change_requests as console_requests  # #16 approvals
from api.fastpath import FastPathStats, SnapshotFastPath
from api.kill_fastpath import KillFastPath
from api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from api.routes import change_requests as approval_routes  # #16 approvals
from api.routes import environments, flags, health, history, plans, sdk, tokens, unleash
from api.routes import webhooks as webhook_routes  # #17 webhooks
from api.service import AdminService
from api.service.approvals import ApprovalService
from api.streams import SERVER_SEND
from flags.plans.scheduler import PlanScheduler
from flags.plans.store import PlanStore
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.store.token_cache import TokenMarkWatch

log = logging.getLogger("flagrail.api")

ROUTERS = (
    health.router,
    environments.router,
    flags.router,
    history.router,
    tokens.router,
    unleash.router,
    plans.router,
    sdk.router,
    approval_routes.router,  # #16: policies, change requests, break-glass reviews
)


class FlagrailApp(FastAPI):
    """FastAPI that keeps the server's own ``send`` in ``scope[SERVER_SEND]`` before
    its middleware wraps it: an open SSE stream writes its changes with it
    (``api.streams``), past wrappers that only matter to a response's start."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, store: SqlFlagStore | None = None) -> FastAPI:
    """Build the app. ``store`` overrides the one made from ``settings.database_url``."""
    settings = settings or Settings()
    store = store or SqlFlagStore(settings.database_url, ping_idle=settings.db_ping_idle)
    store.tokens.ttl = settings.token_cache_ttl

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started: list[Any] = []
        try:
            for service in app.state.services:
                await run_in_threadpool(service.start)
                started.append(service)
            yield
        finally:
            for service in reversed(started):
                try:
                    await run_in_threadpool(service.close)
                except Exception:  # shutting down: log and go on closing the rest
                    log.exception("closing %r failed", service)
            store.close()

    app = FlagrailApp(
        title="flagrail",
        version="0.1.0",
        description="Feature flags with kill switches, staged rollouts and an audited history.",
        lifespan=lifespan,
        # FLAGRAIL_DOCS=false: no /docs, /redoc or /openapi.json (each answers 404).
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.services = []
    if settings.token_cache_ttl > 0:  # revocations made by other processes reach the cache
        app.state.services.append(TokenMarkWatch(store.tokens, store.revocation_mark))
    services = sdk.install(app, settings, store)
    app.state.plans = PlanStore(store)
    # #16: the approval gate every admin change path goes through.
    app.state.approvals = ApprovalService.on(store, app.state.plans)
    app.state.service = AdminService(
        store,
        plans=app.state.plans,
        telemetry=services.telemetry,
        instances=services.registry,
        approvals=app.state.approvals,
    )
    if settings.scheduler:
        app.state.services.append(PlanScheduler(app.state.plans, services.telemetry))
    # #17: /admin/webhooks and the delivery worker (a started service unless
    # FLAGRAIL_WEBHOOK_WORKER=false).
    webhook_routes.install(app, store)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    console.install(app)  # the web console at /console (its users store starts first)
    app.include_router(console_requests.router)  # #16: /console/change-requests
    # Innermost of ours: SDK snapshot polls answered from memory (request ids and the
    # body limit still apply to them).
    app.state.fastpath = FastPathStats()
    app.add_middleware(KillFastPath, state=app.state)  # the kill an operator waits on
    app.add_middleware(SnapshotFastPath, state=app.state)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app
