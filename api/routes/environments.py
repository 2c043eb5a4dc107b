"""``/admin/environments``: list and create environments."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api.deps import (
    Principal,
    Reader,
    allowed,
    request_id_dependency,
    service_dependency,
)
from api.schemas import EnvironmentCreate, environment_json, environments_json
from api.service import AdminService, Operation

router = APIRouter(prefix="/admin/environments", tags=["environments"])
Service = Annotated[AdminService, Depends(service_dependency)]


@router.get("")
def list_environments(service: Service, principal: Principal = Reader) -> dict[str, Any]:
    return environments_json(service.list_environments(principal))


@router.post("", status_code=201)
def create_environment(
    body: EnvironmentCreate,
    service: Service,
    rid: Annotated[str, Depends(request_id_dependency)],
    principal: Principal = Depends(allowed(Operation.CREATE_ENVIRONMENT)),
) -> dict[str, Any]:
    return environment_json(service.create_environment(principal, body.name, request_id=rid))
