"""``/admin/flags``: flags, their per-environment state, and the kill switch."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from api.deps import Editor, Operator, Principal, Reader, get_store, request_id
from api.schemas import (
    NO_NUL,
    FlagCreate,
    FlagUpdate,
    KillRequest,
    StateUpdate,
    flag_json,
    kill_json,
)
from flags.errors import ValidationError
from flags.model import validate_environment_name, validate_flag_key
from flags.store.sql import SqlFlagStore

router = APIRouter(prefix="/admin/flags", tags=["flags"])

Store = Annotated[SqlFlagStore, Depends(get_store)]
RequestId = Annotated[str, Depends(request_id)]


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


def telemetry_for(request: Request, key: str) -> dict[str, dict[str, Any]] | None:
    """Per-environment evaluation facts, when the SDK telemetry store is installed."""
    telemetry = getattr(request.app.state, "telemetry", None)
    return telemetry.flag_environments(key) if telemetry is not None else None


@router.get("")
def list_flags(
    store: Store,
    principal: Principal = Reader,
    kind: str | None = Query(default=None, max_length=20, pattern=NO_NUL),
    tag: str | None = Query(default=None, max_length=200, pattern=NO_NUL),
    archived: bool | None = None,
    q: str | None = Query(default=None, max_length=200, pattern=NO_NUL),
) -> dict[str, Any]:
    records = store.list_flags(kind=kind, tag=tag, archived=archived, q=q, scope=principal.scope)
    return {"items": [flag_json(r) for r in records]}


@router.post("", status_code=201)
def create_flag(
    body: FlagCreate, store: Store, rid: RequestId, principal: Principal = Editor
) -> dict[str, Any]:
    validate_flag_key(body.key)
    record = store.create_flag(
        body.key,
        description=body.description,
        kind=body.kind,
        owner=body.owner,
        tags=body.tags,
        actor=principal.actor,
        request_id=rid,
    )
    return flag_json(store.get_flag(record.flag.key, scope=principal.scope))


@router.get("/{key}")
def get_flag(
    key: str, request: Request, store: Store, principal: Principal = Reader
) -> dict[str, Any]:
    validate_flag_key(key)
    return flag_json(store.get_flag(key, scope=principal.scope), telemetry_for(request, key))


@router.patch("/{key}")
def update_flag(
    key: str, body: FlagUpdate, store: Store, rid: RequestId, principal: Principal = Editor
) -> dict[str, Any]:
    validate_flag_key(key)
    changes = body.model_dump(exclude_unset=True)
    store.update_flag(key, changes, actor=principal.actor, request_id=rid)
    return flag_json(store.get_flag(key, scope=principal.scope))


@router.delete("/{key}")
def archive_flag(
    key: str, store: Store, rid: RequestId, principal: Principal = Editor
) -> dict[str, Any]:
    validate_flag_key(key)
    principal.check_unscoped("archiving a flag")
    store.archive_flag(key, actor=principal.actor, request_id=rid)
    return flag_json(store.get_flag(key, scope=principal.scope))


@router.patch("/{key}/environments/{env}")
def update_state(
    key: str,
    env: str,
    body: StateUpdate,
    response: Response,
    store: Store,
    rid: RequestId,
    principal: Principal = Editor,
    if_match: str | None = Header(default=None, max_length=40),
) -> dict[str, Any]:
    """Change the state of ``key`` in ``env``; ``If-Match: "<version>"`` makes it conditional."""
    validate_flag_key(key)
    validate_environment_name(env)
    principal.check_env(env)
    expected = parse_if_match(if_match)
    state = store.update_state(
        key,
        env,
        body.to_change(),
        actor=principal.actor,
        expected_version=expected,
        reason=body.reason,
        request_id=rid,
    )
    response.headers["ETag"] = f'"{state.version}"'
    return {"flag": key, "environment": env, **state.to_dict()}


def _target_envs(principal: Principal, requested: list[str] | None) -> list[str] | None:
    if requested is None:
        return list(principal.scope) if principal.scope is not None else None
    for env in requested:
        validate_environment_name(env, "environments")
    principal.check_envs(requested)
    return requested


@router.post("/{key}/kill")
def kill_flag(
    key: str,
    body: KillRequest,
    request: Request,
    store: Store,
    rid: RequestId,
    principal: Principal = Operator,
    wait: str | None = Query(default=None, max_length=20),
) -> dict[str, Any]:
    """Kill ``key`` in the given environments (default: every environment of the token).

    ``?wait=2s`` answers once every live SDK instance applied the kill, or when the
    wait runs out, adding ``confirmed``, ``live``, ``lagging`` and ``elapsed_ms``.
    """
    from api.routes.sdk import confirm_kill, kill_wait

    validate_flag_key(key)
    seconds = kill_wait(request, wait)
    result = store.kill(
        key,
        _target_envs(principal, body.environments),
        reason=body.reason,
        actor=principal.actor,
        request_id=rid,
    )
    if seconds is None:
        return kill_json(result)
    return {**kill_json(result), **confirm_kill(request, store, result, seconds)}


@router.post("/{key}/unkill")
def unkill_flag(
    key: str, body: KillRequest, store: Store, rid: RequestId, principal: Principal = Operator
) -> dict[str, Any]:
    validate_flag_key(key)
    result = store.unkill(
        key,
        _target_envs(principal, body.environments),
        reason=body.reason,
        actor=principal.actor,
        request_id=rid,
    )
    return kill_json(result)
