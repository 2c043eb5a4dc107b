"""``/admin/tokens``: create (value shown once), list and revoke API tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from api.deps import Admin, Principal, get_store, request_id
from api.schemas import NO_NUL, TokenCreate
from flags.errors import ForbiddenError
from flags.model import validate_environment_name
from flags.store.sql import SqlFlagStore

router = APIRouter(prefix="/admin/tokens", tags=["tokens"])
Store = Annotated[SqlFlagStore, Depends(get_store)]


@router.post("", status_code=201)
def create_token(
    body: TokenCreate,
    store: Store,
    rid: Annotated[str, Depends(request_id)],
    principal: Principal = Admin,
) -> dict[str, Any]:
    """A scoped admin may only hand out tokens within its own environments."""
    if body.environments is not None:
        for env in body.environments:
            validate_environment_name(env, "environments")
        principal.check_envs(body.environments)
    elif principal.scope is not None:
        raise ForbiddenError(
            "a token scoped to some environments cannot create an unscoped token",
            field="environments",
        )
    info, secret = store.create_token(
        body.name, body.role, body.environments, actor=principal.actor, request_id=rid
    )
    return {
        "id": info.id,
        "name": info.name,
        "role": info.role.value,
        "environments": list(info.environments) if info.environments is not None else None,
        "token": secret,
    }


def _within_scope(principal: Principal, environments: tuple[str, ...] | None) -> bool:
    if principal.scope is None:
        return True
    return environments is not None and set(environments) <= set(principal.scope)


@router.get("")
def list_tokens(store: Store, principal: Principal = Admin) -> dict[str, Any]:
    items = [t.to_dict() for t in store.list_tokens() if _within_scope(principal, t.environments)]
    return {"items": items}


@router.delete("/{token_id}")
def revoke_token(
    token_id: Annotated[str, Path(max_length=64, pattern=NO_NUL)],
    store: Store,
    rid: Annotated[str, Depends(request_id)],
    principal: Principal = Admin,
) -> dict[str, Any]:
    tokens = {t.id: t for t in store.list_tokens()}
    target = tokens.get(token_id)
    if target is not None and not _within_scope(principal, target.environments):
        raise ForbiddenError("that token reaches beyond this token's environments")
    return store.revoke_token(token_id, actor=principal.actor, request_id=rid).to_dict()
