"""``/admin/environments``: list and create environments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.deps import Admin, Principal, Reader, get_store, request_id
from api.schemas import EnvironmentCreate, environment_json
from flags.store.sql import SqlFlagStore

router = APIRouter(prefix="/admin/environments", tags=["environments"])


@router.get("")
def list_environments(
    principal: Principal = Reader, store: SqlFlagStore = Depends(get_store)
) -> dict[str, Any]:
    envs = [e for e in store.list_environments() if principal.token.covers(e.name)]
    return {"items": [environment_json(e) for e in envs]}


@router.post("", status_code=201)
def create_environment(
    body: EnvironmentCreate,
    principal: Principal = Admin,
    store: SqlFlagStore = Depends(get_store),
    rid: str = Depends(request_id),
) -> dict[str, Any]:
    principal.check_unscoped("creating an environment")
    env = store.create_environment(body.name, actor=principal.actor, request_id=rid)
    return environment_json(env)
