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

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query

from api.deps import (
    Principal,
    Reader,
    allowed,
    request_id_dependency,
    service_dependency,
)
from api.schemas import PlanActionBody, plans_json
from api.service import AdminService, Operation
from api.service.admin import MOVE_OPERATIONS
from api.service.commands import MovePlan, PlanMove

router = APIRouter(tags=["plans"])

Service = Annotated[AdminService, Depends(service_dependency)]
RequestId = Annotated[str, Depends(request_id_dependency)]
JsonObject = Annotated[dict[str, Any], Body()]
PlanId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The plan's id.")]
ActionBody = Annotated[PlanActionBody | None, Body()]
CreatePlans = Depends(allowed(Operation.PLAN))


BreakGlass = Annotated[bool, Query()]
GlassReason = Annotated[str | None, Query(max_length=2000)]


@router.post("/admin/flags/{key}/plans", status_code=201)
def create_plan(
    key: str,
    body: JsonObject,
    service: Service,
    rid: RequestId,
    principal: Principal = CreatePlans,
    break_glass: BreakGlass = False,
    reason: GlassReason = None,
) -> dict[str, Any]:
    """Create a rollout plan for ``key``; 201 with the plan (first stage already applied).
    In a gated environment, 202 with the change request the plan became, unless an
    admin breaks glass (``?break_glass=true&reason=...``, #16)."""
    glass = (reason or "") if break_glass else None
    return service.create_plan(principal, key, body, request_id=rid, break_glass=glass).to_dict()


@router.post("/admin/flags/{key}/schedules", status_code=201)
def create_schedule(
    key: str,
    body: JsonObject,
    service: Service,
    rid: RequestId,
    principal: Principal = CreatePlans,
    break_glass: BreakGlass = False,
    reason: GlassReason = None,
) -> dict[str, Any]:
    """Schedule one state change: ``{"environment", "at", "change": {...}}``; gated as
    a plan."""
    glass = (reason or "") if break_glass else None
    return service.create_schedule(
        principal, key, body, request_id=rid, break_glass=glass
    ).to_dict()


@router.get("/admin/flags/{key}/plans")
def list_plans(key: str, service: Service, principal: Principal = Reader) -> dict[str, Any]:
    """Plans and schedules of ``key`` in the token's environments, newest first."""
    return plans_json(service.list_plans(principal, key))


@router.get("/admin/plans/{plan_id}")
def get_plan(plan_id: PlanId, service: Service, principal: Principal = Reader) -> dict[str, Any]:
    return service.get_plan(principal, plan_id).to_dict()


def _add_move_route(move: PlanMove, summary: str) -> None:
    """Register ``POST /admin/plans/{plan_id}/<move>``, with an optional ``reason`` body."""
    operation = Depends(allowed(MOVE_OPERATIONS[move]))

    def move_plan(
        plan_id: PlanId,
        service: Service,
        rid: RequestId,
        body: ActionBody = None,
        principal: Principal = operation,
    ) -> dict[str, Any]:
        command = MovePlan(plan_id, move, body.reason if body else None)
        return service.move_plan(principal, command, request_id=rid).to_dict()

    move_plan.__doc__ = summary
    router.post(f"/admin/plans/{{plan_id}}/{move.value}", name=f"{move.value}_plan")(move_plan)


_add_move_route(PlanMove.PAUSE, "Stop a pending or running plan where it is (409 otherwise).")
_add_move_route(
    PlanMove.RESUME,
    "Continue a paused or rolled-back plan; its current hold starts again (409 while "
    "the flag is killed).",
)
_add_move_route(PlanMove.ABORT, "End a plan for good; the flag stays as it is.")


@router.post("/admin/plans/{plan_id}/advance")
def advance_plan(
    plan_id: PlanId,
    service: Service,
    rid: RequestId,
    principal: Principal = Depends(allowed(Operation.PLAN)),
) -> dict[str, Any]:
    """Apply the next stage now, skipping the rest of the hold (after the last: complete)."""
    command = MovePlan(plan_id, PlanMove.ADVANCE)
    return service.move_plan(principal, command, request_id=rid).to_dict()
