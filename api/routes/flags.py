"""``/admin/flags``: flags, their per-environment state, and the kill switch.

Each route parses the request, calls ``AdminService`` and renders its answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from api.deps import (
    Principal,
    Reader,
    allowed,
    request_id_dependency,
    service_dependency,
)
from api.schemas import (
    NO_NUL,
    FlagCreate,
    FlagUpdate,
    KillRequest,
    StateUpdate,
    VariantCreate,
    VariantUpdate,
    flag_json,
    flag_state_json,
    flag_view_json,
    flags_json,
    kill_json,
)
from api.service import AdminService, Operation
from api.service.commands import EditVariant, FlagFilter, VariantEdit
from flags.errors import ValidationError

router = APIRouter(prefix="/admin/flags", tags=["flags"])

Service = Annotated[AdminService, Depends(service_dependency)]
RequestId = Annotated[str, Depends(request_id_dependency)]
EditFlag = Depends(allowed(Operation.EDIT_FLAG))


def parse_if_match(value: str | None) -> int | None:
    """``If-Match: "<version>"`` -> the version; ``*`` or absent -> None.

    Raises ``ValidationError`` (field ``If-Match``) for anything else.
    """
    if value is None or value.strip() == "*":
        return None
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    if not raw.isdigit() or len(raw) > 18:
        raise ValidationError('If-Match must be a quoted version, like "3"', field="If-Match")
    return int(raw)


@router.get("")
def list_flags(
    service: Service,
    principal: Principal = Reader,
    kind: str | None = Query(default=None, max_length=20, pattern=NO_NUL),
    tag: str | None = Query(default=None, max_length=200, pattern=NO_NUL),
    archived: bool | None = None,
    q: str | None = Query(default=None, max_length=200, pattern=NO_NUL),
) -> dict[str, Any]:
    return flags_json(service.list_flags(principal, FlagFilter(kind, tag, archived, q)))


@router.post("", status_code=201)
def create_flag(
    body: FlagCreate, service: Service, rid: RequestId, principal: Principal = EditFlag
) -> dict[str, Any]:
    return flag_json(service.create_flag(principal, body.to_command(), request_id=rid))


@router.get("/{key}")
def get_flag(key: str, service: Service, principal: Principal = Reader) -> dict[str, Any]:
    return flag_view_json(service.get_flag(principal, key))


@router.patch("/{key}")
def update_flag(
    key: str, body: FlagUpdate, service: Service, rid: RequestId, principal: Principal = EditFlag
) -> dict[str, Any]:
    return flag_json(service.update_flag(principal, body.to_command(key), request_id=rid))


@router.delete("/{key}")
def archive_flag(
    key: str, service: Service, rid: RequestId, principal: Principal = EditFlag
) -> dict[str, Any]:
    return flag_json(service.archive_flag(principal, key, request_id=rid))


@router.post("/{key}/variants", status_code=201)
def add_variant(
    key: str, body: VariantCreate, service: Service, rid: RequestId, principal: Principal = EditFlag
) -> dict[str, Any]:
    """Declare a variant on a typed flag (#19); every environment's snapshot changes."""
    return flag_json(service.edit_variant(principal, body.to_command(key), request_id=rid))


@router.patch("/{key}/variants/{name}")
def update_variant(
    key: str,
    name: str,
    body: VariantUpdate,
    service: Service,
    rid: RequestId,
    principal: Principal = EditFlag,
) -> dict[str, Any]:
    """Rename a variant (``{"name": new}``: every use follows) or change its value."""
    command = body.to_command(key, name)
    return flag_json(service.edit_variant(principal, command, request_id=rid))


@router.delete("/{key}/variants/{name}")
def remove_variant(
    key: str, name: str, service: Service, rid: RequestId, principal: Principal = EditFlag
) -> dict[str, Any]:
    """Remove a variant; 409 naming where it is still served."""
    command = EditVariant(key, name, VariantEdit.REMOVE)
    return flag_json(service.edit_variant(principal, command, request_id=rid))


@router.patch("/{key}/environments/{env}")
def update_state(
    key: str,
    env: str,
    body: StateUpdate,
    response: Response,
    service: Service,
    rid: RequestId,
    principal: Principal = Depends(allowed(Operation.SET_STATE)),
    if_match: str | None = Header(default=None, max_length=40),
    break_glass: bool = Query(default=False),
) -> dict[str, Any]:
    """Change the state of ``key`` in ``env``; ``If-Match: "<version>"`` makes it conditional.

    In an environment that requires approvals a change that raises risk answers 202
    with the change request it became; ``?break_glass=true`` (an admin, with a
    ``reason``) applies it at once and opens a review item (#16)."""
    command = body.to_command(key, env, parse_if_match(if_match))
    state = service.set_state(principal, command, request_id=rid, break_glass=break_glass)
    response.headers["ETag"] = f'"{state.version}"'
    return flag_state_json(key, env, state)


@router.post("/{key}/kill")
def kill_flag(
    key: str,
    body: KillRequest,
    request: Request,
    service: Service,
    rid: RequestId,
    principal: Principal = Depends(allowed(Operation.KILL)),
    wait: str | None = Query(default=None, max_length=20),
) -> dict[str, Any]:
    """Kill ``key`` in the given environments (default: every environment of the token).

    ``?wait=2s`` answers once every live SDK instance applied the kill, or when the
    wait runs out, adding ``confirmed``, ``live``, ``lagging`` and ``elapsed_ms``.
    """
    from api.routes.sdk import kill_wait

    seconds = kill_wait(request, wait)
    result = service.kill(principal, body.to_command(key), request_id=rid)
    if seconds is None:
        return kill_json(result)
    return {**kill_json(result), **service.confirm_kill(result, seconds)}


@router.post("/{key}/unkill")
def unkill_flag(
    key: str,
    body: KillRequest,
    service: Service,
    rid: RequestId,
    principal: Principal = Depends(allowed(Operation.UNKILL)),
    break_glass: bool = Query(default=False),
) -> dict[str, Any]:
    """Lift a kill; a gated environment answers 202 with its change request (#16)."""
    command = body.to_command(key)
    return kill_json(service.unkill(principal, command, request_id=rid, break_glass=break_glass))
