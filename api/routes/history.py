"""``GET /admin/history`` and ``GET /admin/flags/{key}/history``: the read-only change log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api.deps import Principal, Reader, service_dependency
from api.schemas import NO_NUL, history_json
from api.service import AdminService
from api.service.commands import history_filter
from flags.history import MAX_PAGE, HistoryQuery

router = APIRouter(tags=["history"])


def history_filters(
    flag: str | None = Query(default=None, max_length=100, pattern=NO_NUL),
    environment: str | None = Query(default=None, max_length=40, pattern=NO_NUL),
    actor: str | None = Query(default=None, max_length=200, pattern=NO_NUL),
    action: str | None = Query(default=None, max_length=40, pattern=NO_NUL),
    since: str | None = Query(
        default=None, max_length=64, description="ISO-8601 time or a duration like '7d'"
    ),
    until: str | None = Query(default=None, max_length=64),
    limit: int = Query(default=100, ge=1, le=MAX_PAGE),
    cursor: str | None = Query(default=None, max_length=64),
) -> HistoryQuery:
    """The query parameters both history routes take."""
    return history_filter(
        flag=flag,
        environment=environment,
        actor=actor,
        action=action,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )


Filters = Annotated[HistoryQuery, Depends(history_filters)]
Service = Annotated[AdminService, Depends(service_dependency)]


@router.get("/admin/history")
def list_history(
    filters: Filters, service: Service, principal: Principal = Reader
) -> dict[str, Any]:
    """Every change, newest first; ``next_cursor`` fetches the next page."""
    return history_json(service.history(principal, filters))


@router.get("/admin/flags/{key}/history")
def flag_history(
    key: str, filters: Filters, service: Service, principal: Principal = Reader
) -> dict[str, Any]:
    return history_json(service.flag_history(principal, key, filters))
