"""FastAPI dependencies: the store, the admin service, the request id, and the
authenticated ``Principal``.

Who may do what is decided in ``api.service.principal`` (``PERMISSIONS``) and
checked by ``AdminService`` on every operation. ``allowed(operation)`` makes the
same check while the request is being resolved, so a caller without the role
hears 403 before its body is judged. A ``client`` token reaches only the SDK
endpoints of its environments (``SdkClient``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.service import AdminService, Operation, Principal
from flags.errors import UnauthenticatedError, ValidationError
from flags.model import TokenInfo
from flags.store import FlagStore

__all__ = [
    "ACTOR_HEADER",
    "Principal",
    "Reader",
    "SdkClient",
    "allowed",
    "authenticate",
    "authenticate_async",
    "bearer_secret",
    "get_service",
    "get_store",
    "parse_bearer",
    "permitted",
    "request_id",
    "request_id_dependency",
    "service_dependency",
    "store_dependency",
]

ACTOR_HEADER = "x-flagrail-actor"


def get_store(request: Request) -> FlagStore:
    return request.app.state.store  # type: ignore[no-any-return]


def get_service(request: Request) -> AdminService:
    """The app's ``AdminService`` (made by ``create_app``)."""
    return request.app.state.service  # type: ignore[no-any-return]


def request_id(request: Request) -> str:
    return request.state.request_id  # type: ignore[no-any-return]


# The same three as dependencies. ``async`` because FastAPI runs a plain ``def``
# dependency in the thread pool: a thread hop per dependency per request (about a
# tenth of a millisecond each, more when the machine is busy) to read an attribute.
async def store_dependency(request: Request) -> FlagStore:
    return get_store(request)


async def service_dependency(request: Request) -> AdminService:
    return get_service(request)


async def request_id_dependency(request: Request) -> str:
    return request_id(request)


def bearer_secret(request: Request, *, allow_raw: bool = False) -> str:
    """The token in ``Authorization``; ``allow_raw`` also takes it without ``Bearer``
    (as Unleash SDKs send it). Raises ``UnauthenticatedError``."""
    return parse_bearer(request.headers.get("authorization"), allow_raw=allow_raw)


def parse_bearer(header: str | None, *, allow_raw: bool = False) -> str:
    """The token in an ``Authorization`` header's value (see ``bearer_secret``)."""
    if not header:
        raise UnauthenticatedError("missing Authorization header", field="Authorization")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_raw and " " not in header.strip():
        return header.strip()
    raise UnauthenticatedError("Authorization must be 'Bearer <token>'", field="Authorization")


def _check_claimed_actor(claimed: str) -> None:
    # A guard names itself (guard:<host>:<pid>); nothing else may be claimed.
    if not claimed.startswith("guard:") or len(claimed) > 200 or not claimed.isprintable():
        raise ValidationError(
            "X-Flagrail-Actor must be 'guard:<host>:<pid>' (at most 200 characters)",
            field="X-Flagrail-Actor",
        )


def authenticate(request: Request, *, allow_raw: bool = False) -> TokenInfo:
    """The request's live token (blocking: may read the database). Raises
    ``UnauthenticatedError``."""
    secret = bearer_secret(request, allow_raw=allow_raw)
    return _live(get_store(request).authenticate(secret))


async def authenticate_async(request: Request, *, allow_raw: bool = False) -> TokenInfo:
    """``authenticate`` for the event loop: a token in the store's token cache costs no
    I/O and no thread-pool hop; any other is read in the thread pool."""
    secret = bearer_secret(request, allow_raw=allow_raw)
    store = get_store(request)
    cached = getattr(store, "cached_token", None)
    token = cached(secret) if cached is not None else None
    if token is None:
        token = await run_in_threadpool(store.authenticate, secret)
    return _live(token)


def _live(token: TokenInfo | None) -> TokenInfo:
    if token is None:
        raise UnauthenticatedError("unknown or revoked token", field="Authorization")
    return token


def permitted(request: Request, token: TokenInfo, operation: Operation) -> Principal:
    """The principal of ``token`` if its role may perform ``operation`` (else 403),
    with the claimed actor checked (see ``allowed``); kept in ``request.state``."""
    Principal.from_token(token).allow(operation)  # the role first, then the header
    claimed = request.headers.get(ACTOR_HEADER)
    principal = Principal.from_token(token, claimed_actor=claimed)
    if claimed is not None:
        _check_claimed_actor(claimed)
    request.state.principal = principal
    return principal


def allowed(operation: Operation) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency: authenticate, and refuse (403) a principal whose role may not
    perform ``operation``. ``X-Flagrail-Actor`` is refused (403 naming the header)
    from any token but a ``guard``'s, and from a guard unless it is
    ``guard:<host>:<pid>`` (422). Async: FastAPI runs a plain ``def`` dependency in
    the thread pool, a hop per request even when the token is cached."""

    async def dependency(request: Request) -> Principal:
        return permitted(request, await authenticate_async(request), operation)

    return dependency


async def require_client(request: Request) -> Principal:
    """SDK endpoints: any token (``client`` included); scope is checked by the route."""
    return Principal.from_token(await authenticate_async(request))


Reader = Depends(allowed(Operation.READ))
SdkClient = Depends(require_client)
