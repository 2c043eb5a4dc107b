"""Liveness and metrics: ``GET /healthz`` (no auth) and ``GET /metrics`` (Prometheus;
a ``reader`` token or above, unless ``FLAGRAIL_METRICS_PUBLIC=true``: its labels name
flags and environments)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import authenticate, permitted
from api.service import Operation
from flags.errors import StoreUnavailableError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """200 when the database answers, else 503."""
    try:
        request.app.state.store.ping()
    except StoreUnavailableError as exc:
        return JSONResponse(
            {
                "status": "unavailable",
                "error": {"code": "store_unavailable", "message": exc.message, "field": None},
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok"})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus metrics of this process (cache layers included). Raises
    ``UnauthenticatedError`` (401) / ``ForbiddenError`` (403) without a reader token,
    unless the settings make it public."""
    if not request.app.state.settings.metrics_public:
        permitted(request, authenticate(request), Operation.READ)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
