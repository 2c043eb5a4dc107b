"""``/admin/tokens``: create (value shown once), list and revoke API tokens."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from api.deps import (
    Principal,
    allowed,
    request_id_dependency,
    service_dependency,
)
from api.schemas import NO_NUL, TokenCreate, new_token_json, tokens_json
from api.service import AdminService, Operation

router = APIRouter(prefix="/admin/tokens", tags=["tokens"])
Service = Annotated[AdminService, Depends(service_dependency)]
RequestId = Annotated[str, Depends(request_id_dependency)]
ManageTokens = Depends(allowed(Operation.MANAGE_TOKENS))


@router.post("", status_code=201)
def create_token(
    body: TokenCreate, service: Service, rid: RequestId, principal: Principal = ManageTokens
) -> dict[str, Any]:
    """A scoped admin may only hand out tokens within its own environments."""
    return new_token_json(*service.create_token(principal, body.to_command(), request_id=rid))


@router.get("")
def list_tokens(service: Service, principal: Principal = ManageTokens) -> dict[str, Any]:
    return tokens_json(service.list_tokens(principal))


@router.delete("/{token_id}")
def revoke_token(
    token_id: Annotated[str, Path(max_length=64, pattern=NO_NUL)],
    service: Service,
    rid: RequestId,
    principal: Principal = ManageTokens,
) -> dict[str, Any]:
    return service.revoke_token(principal, token_id, request_id=rid).to_dict()
