"""Rollout plans and scheduled changes.

``POST /admin/flags/{key}/plans`` (editor) creates a plan and applies its first
stage at once (or at ``start_at``); ``POST /admin/flags/{key}/schedules`` (editor)
schedules one state change; ``GET /admin/plans/{plan_id}`` and
``GET /admin/flags/{key}/plans`` (reader) read them; ``pause`` and ``abort``
(operator: they only stop things) and ``resume`` and ``advance`` (editor: they
move a rollout forward) act on one. Bodies are validated by ``flags.plans.model``,
so a bad plan is a 422 naming the field (``stages.2.rollout``); an unknown flag is
a 404 whatever the body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Request

from api.deps import Editor, Operator, Principal, Reader, get_store, request_id
from api.schemas import Body as StrictBody
from flags.model import validate_flag_key
from flags.plans.model import Plan, PlanSpec, parse_plan, parse_schedule
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore

router = APIRouter(tags=["plans"])


def get_plans(request: Request) -> PlanStore:
    """The app's ``PlanStore`` (made by ``create_app``; one is made on first use otherwise)."""
    plans = getattr(request.app.state, "plans", None)
    if plans is None:
        plans = request.app.state.plans = PlanStore(get_store(request))
    return plans  # type: ignore[no-any-return]


Store = Annotated[SqlFlagStore, Depends(get_store)]
Plans = Annotated[PlanStore, Depends(get_plans)]
RequestId = Annotated[str, Depends(request_id)]
JsonObject = Annotated[dict[str, Any], Body()]
PlanId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The plan's id.")]


class PlanActionBody(StrictBody):
    """Optional body of pause / resume / abort: why (recorded in the history)."""

    reason: str | None = None


ActionBody = Annotated[PlanActionBody | None, Body()]


def _visible_plan(plans: PlanStore, plan_id: int, principal: Principal) -> Plan:
    plan = plans.get(plan_id)
    principal.check_env(plan.environment)
    return plan


def _check_flag(store: SqlFlagStore, key: str) -> None:
    """Reject a malformed ``key``, then 404 for an unknown flag (before any body is judged)."""
    validate_flag_key(key)
    store.get_flag(key)


def _create(
    parse: Callable[[], PlanSpec],
    key: str,
    store: SqlFlagStore,
    plans: PlanStore,
    rid: str,
    principal: Principal,
) -> dict[str, Any]:
    """Create the plan or schedule ``parse()`` reads from the body, once the flag is known."""
    _check_flag(store, key)
    spec = parse()
    principal.check_env(spec.environment)
    return plans.create(key, spec, actor=principal.actor, request_id=rid).to_dict()


def _act_with_reason(
    act: Callable[..., Plan],
    plan_id: int,
    plans: PlanStore,
    rid: str,
    body: PlanActionBody | None,
    principal: Principal,
) -> dict[str, Any]:
    """Run ``act`` (pause, resume or abort) on a plan the token may see, with the body's reason."""
    _visible_plan(plans, plan_id, principal)
    reason = body.reason if body else None
    return act(plan_id, actor=principal.actor, reason=reason, request_id=rid).to_dict()


@router.post("/admin/flags/{key}/plans", status_code=201)
def create_plan(
    key: str,
    body: JsonObject,
    store: Store,
    plans: Plans,
    rid: RequestId,
    principal: Principal = Editor,
) -> dict[str, Any]:
    """Create a rollout plan for ``key``; 201 with the plan (first stage already applied)."""
    return _create(lambda: parse_plan(body), key, store, plans, rid, principal)


@router.post("/admin/flags/{key}/schedules", status_code=201)
def create_schedule(
    key: str,
    body: JsonObject,
    store: Store,
    plans: Plans,
    rid: RequestId,
    principal: Principal = Editor,
) -> dict[str, Any]:
    """Schedule one state change: ``{"environment", "at", "change": {...}}``."""
    return _create(
        lambda: parse_schedule(body, now=plans.clock()), key, store, plans, rid, principal
    )


@router.get("/admin/flags/{key}/plans")
def list_plans(
    key: str, store: Store, plans: Plans, principal: Principal = Reader
) -> dict[str, Any]:
    """Plans and schedules of ``key`` in the token's environments, newest first."""
    _check_flag(store, key)
    return {"items": [p.to_dict() for p in plans.list_for_flag(key, scope=principal.scope)]}


@router.get("/admin/plans/{plan_id}")
def get_plan(plan_id: PlanId, plans: Plans, principal: Principal = Reader) -> dict[str, Any]:
    return _visible_plan(plans, plan_id, principal).to_dict()


@router.post("/admin/plans/{plan_id}/pause")
def pause_plan(
    plan_id: PlanId,
    plans: Plans,
    rid: RequestId,
    body: ActionBody = None,
    principal: Principal = Operator,
) -> dict[str, Any]:
    """Stop a pending or running plan where it is (409 otherwise)."""
    return _act_with_reason(plans.pause, plan_id, plans, rid, body, principal)


@router.post("/admin/plans/{plan_id}/resume")
def resume_plan(
    plan_id: PlanId,
    plans: Plans,
    rid: RequestId,
    body: ActionBody = None,
    principal: Principal = Editor,
) -> dict[str, Any]:
    """Continue a paused or rolled-back plan; its current hold starts again (409 while
    the flag is killed)."""
    return _act_with_reason(plans.resume, plan_id, plans, rid, body, principal)


@router.post("/admin/plans/{plan_id}/abort")
def abort_plan(
    plan_id: PlanId,
    plans: Plans,
    rid: RequestId,
    body: ActionBody = None,
    principal: Principal = Operator,
) -> dict[str, Any]:
    """End a plan for good; the flag stays as it is."""
    return _act_with_reason(plans.abort, plan_id, plans, rid, body, principal)


@router.post("/admin/plans/{plan_id}/advance")
def advance_plan(
    plan_id: PlanId, plans: Plans, rid: RequestId, principal: Principal = Editor
) -> dict[str, Any]:
    """Apply the next stage now, skipping the rest of the hold (after the last: complete)."""
    _visible_plan(plans, plan_id, principal)
    return plans.advance(plan_id, actor=principal.actor, request_id=rid).to_dict()
