"""``GET /admin/history`` and ``GET /admin/flags/{key}/history``: the read-only change log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api.deps import Principal, Reader, get_store
from api.schemas import NO_NUL
from flags.durations import parse_instant
from flags.history import MAX_PAGE, HistoryQuery
from flags.model import Action, Role, validate_flag_key
from flags.store.sql import SqlFlagStore

router = APIRouter(tags=["history"])
TOKEN_ACTIONS = (Action.TOKEN_CREATE.value, Action.TOKEN_REVOKE.value)


class HistoryFilters:
    """Query parameters shared by both history routes."""

    def __init__(
        self,
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
    ) -> None:
        self.flag = flag
        self.environment = environment
        self.actor = actor
        self.action = action
        self.since = since
        self.until = until
        self.limit = limit
        self.cursor = cursor

    def query(self, principal: Principal, flag: str | None = None) -> HistoryQuery:
        if self.environment is not None:
            principal.check_env(self.environment)
        return HistoryQuery(
            flag=flag if flag is not None else self.flag,
            environment=self.environment,
            actor=self.actor,
            action=self.action,
            since=parse_instant(self.since, "since") if self.since else None,
            until=parse_instant(self.until, "until") if self.until else None,
            limit=self.limit,
            cursor=self.cursor,
            scope=principal.scope,
            # Token rows name other tokens, their roles and scopes: admins only.
            hidden_actions=() if principal.token.role is Role.ADMIN else TOKEN_ACTIONS,
        )


Filters = Annotated[HistoryFilters, Depends()]
Store = Annotated[SqlFlagStore, Depends(get_store)]


@router.get("/admin/history")
def list_history(filters: Filters, store: Store, principal: Principal = Reader) -> dict[str, Any]:
    """Every change, newest first; ``next_cursor`` fetches the next page."""
    return store.list_history(filters.query(principal)).to_dict()


@router.get("/admin/flags/{key}/history")
def flag_history(
    key: str, filters: Filters, store: Store, principal: Principal = Reader
) -> dict[str, Any]:
    validate_flag_key(key)
    store.get_flag(key)  # 404 for an unknown flag
    return store.list_history(filters.query(principal, flag=key)).to_dict()
