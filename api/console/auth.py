"""Console sessions on HTTP: the session cookie, CSRF checks and the security headers.

The session cookie (``flagrail_session``) is ``HttpOnly``, ``SameSite=Strict``, scoped
to ``/console`` and ``Secure`` when the request came over HTTPS (``X-Forwarded-Proto``
is believed only with ``FLAGRAIL_CONSOLE_TRUST_PROXY=true``). Every form carries the
session's CSRF token in a field named ``csrf``; the login form (before any session)
carries a double-submit token matched against a cookie of its own.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flags.errors import ForbiddenError, UnauthenticatedError
from flags.store.users import Session, UserStore

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "ConsoleSettings",
    "SecurityHeadersMiddleware",
    "check_csrf",
]

SESSION_COOKIE = "flagrail_session"
LOGIN_COOKIE = "flagrail_login"
COOKIE_PATH = "/console"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


class ConsoleSettings(BaseSettings):
    """Console knobs (``FLAGRAIL_CONSOLE_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="FLAGRAIL_CONSOLE_", extra="ignore")

    # A session left idle this long ends (seconds).
    idle_timeout: float = Field(default=8 * 3600, gt=0)
    # Believe X-Forwarded-Proto (a TLS-terminating proxy in front of this server).
    trust_proxy: bool = False
    # Flags per page of the grid.
    page_size: int = Field(default=50, ge=1, le=1000)

    @property
    def idle(self) -> timedelta:
        return timedelta(seconds=self.idle_timeout)


class SecurityHeadersMiddleware:
    """Adds the console's security headers to every answer under ``/console``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(COOKIE_PATH):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((n, v) for n, v in HEADERS if n not in names),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def is_https(request: Request, settings: ConsoleSettings) -> bool:
    if settings.trust_proxy:
        forwarded = request.headers.get("x-forwarded-proto", "")
        if forwarded:
            return forwarded.split(",")[0].strip().lower() == "https"
    return request.url.scheme == "https"


def set_cookie(
    response: Response, request: Request, settings: ConsoleSettings, name: str, value: str
) -> None:
    response.set_cookie(
        name,
        value,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request, settings),
    )


def clear_cookie(response: Response, request: Request, settings: ConsoleSettings) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=is_https(request, settings),
    )


def current_session(request: Request, users: UserStore) -> Session:
    """The request's live session. Raises ``UnauthenticatedError`` without one."""
    session = users.session(request.cookies.get(SESSION_COOKIE, ""))
    if session is None:
        raise UnauthenticatedError("log in to use the console", field="session")
    return session


def check_csrf(session: Session, submitted: object) -> None:
    """Raise ``ForbiddenError`` unless ``submitted`` is the session's CSRF token."""
    if not isinstance(submitted, str) or not secrets.compare_digest(
        submitted.encode(), session.csrf.encode()
    ):
        raise ForbiddenError("the form's CSRF token is missing or wrong", field="csrf")


def new_login_token() -> str:
    return secrets.token_urlsafe(24)
