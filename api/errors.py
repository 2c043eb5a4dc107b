"""The one mapping from flagrail errors to HTTP: status codes and the error JSON shape.

Every error answer is ``{"error": {"code", "message", "field"}}``; a version
conflict adds ``"current"`` (the state as it is now). Routes raise
``flags.errors`` types and never ``HTTPException`` for domain errors.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flags import errors as e

log = logging.getLogger("flagrail.api")

# Most specific class first: the first isinstance match wins.
STATUS: tuple[tuple[type[e.FlagrailError], int], ...] = (
    # Not a failure: the change waits for approval; the body is the change request.
    (e.ApprovalRequiredError, 202),
    (e.VersionConflictError, 409),
    (e.StaleChangeRequestError, 409),
    (e.ChangeRequestStateError, 409),
    (e.ConflictError, 409),
    (e.ValidationError, 422),
    (e.ChangeRequestNotFoundError, 404),
    (e.ReviewItemNotFoundError, 404),
    (e.NotFoundError, 404),
    (e.UnauthenticatedError, 401),
    (e.SelfApprovalError, 403),
    (e.ForbiddenError, 403),
    (e.StoreUnavailableError, 503),
    # An upstream flagrail server (reached through flags.admin_client) did not answer.
    (e.ServerUnavailableError, 502),
    (e.SchemaOutdatedError, 503),
    (e.FlagrailError, 400),
)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    502: "bad_gateway",
    503: "unavailable",
}


def status_for(exc: e.FlagrailError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}, **extra}


def error_response(
    status: int, code: str, message: str, field: str | None = None, **extra: Any
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        error_body(code, message, field, **extra), status_code=status, headers=headers
    )


def field_from_loc(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as a field path (``stages.2.rollout``)."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return "body" if loc and loc[0] == "body" else None
    return ".".join(parts)


def flagrail_error_response(exc: e.FlagrailError) -> JSONResponse:
    """The answer to ``exc``, whoever raised it (a route, or an ASGI fast path)."""
    if isinstance(exc, e.ApprovalRequiredError):
        return JSONResponse(exc.body, status_code=status_for(exc))
    extra: dict[str, Any] = {}
    if isinstance(exc, e.VersionConflictError):
        extra["current"] = exc.current
    status = status_for(exc)
    if status >= 500:
        log.warning("answering %s: %s", status, exc)
    return error_response(status, exc.code, exc.message, exc.field, **extra)


def unexpected_error_response(exc: BaseException) -> JSONResponse:
    """The answer to a bug: logged with its traceback; the client gets the usual shape."""
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "internal error; see the server log")


async def _flagrail_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.FlagrailError)
    return flagrail_error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        return error_response(422, "validation_error", "body is not valid JSON", "body")
    field = field_from_loc(tuple(first.get("loc", ())))
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    details = [
        {"field": field_from_loc(tuple(err.get("loc", ()))), "message": err.get("msg")}
        for err in errors[:20]
    ]
    return error_response(422, "validation_error", message, field, details=details)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    response = error_response(exc.status_code, code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    return unexpected_error_response(exc)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(e.FlagrailError, _flagrail_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
