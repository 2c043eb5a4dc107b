"""The web console at ``/console``: server-rendered pages over ``AdminService``.

``install(app)`` wires it into an app made by ``api.app.create_app``: the users store
(on the flag store's engine; its tables are created on start), the login throttle,
the security headers, the pages and their static files under ``/console/static``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.console.auth import ConsoleSettings, SecurityHeadersMiddleware
from api.console.pages import router
from api.routes import users as users_api
from flags.store.users import LoginThrottle, UserStore

__all__ = ["install", "router"]

STATIC = Path(__file__).with_name("static")


def install(
    app: FastAPI, settings: ConsoleSettings | None = None, *, users: UserStore | None = None
) -> UserStore:
    """Serve the console from ``app``; returns its ``UserStore``. Does no I/O."""
    settings = settings or ConsoleSettings()
    users = users or UserStore(app.state.store.engine, idle_timeout=settings.idle)
    app.state.console_settings = settings
    app.state.console_users = users
    app.state.console_throttle = LoginThrottle()
    app.state.services.insert(0, users)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(router)
    app.include_router(users_api.router)  # /admin/users: the same UserStore
    app.add_middleware(SecurityHeadersMiddleware)
    return users
