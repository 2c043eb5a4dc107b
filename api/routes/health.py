"""Liveness and metrics: ``GET /healthz`` (no auth) and ``GET /metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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
def metrics() -> Response:
    """Prometheus metrics of this process (cache layers included)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
