"""Approvals over HTTP: environment policies, ``/admin/change-requests`` and break-glass
review items. Thin: parse, call ``ApprovalService``, render.

- ``GET|PUT /admin/environments/{env}/policy``: ``required_approvals`` (0-5, default
  0) and ``allow_self_approval`` (default false); PUT needs an admin for every
  environment.
- ``GET /admin/change-requests`` (``status``, ``environment``, ``flag``, ``limit``),
  ``GET /admin/change-requests/{id}`` (with its ``diff``), ``PATCH`` (the author
  edits the change: its approvals drop), ``POST .../{id}/approve`` (the approval that
  completes the count applies it), ``.../reject``, ``.../cancel``, ``.../apply``.
- ``GET /admin/reviews`` (open break-glass review items; ``all=true`` for every one),
  ``POST /admin/reviews/{id}/acknowledge`` (a second person closes one).

``create_app`` includes ``router`` and makes the ``ApprovalService``
(``app.state.approvals``), the one ``AdminService`` gates its changes with.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import Field

from api.deps import Principal, Reader, request_id_dependency
from api.schemas import Body as BodyModel
from api.schemas import StateUpdate
from api.service.approvals import ApprovalService
from flags.errors import ValidationError
from flags.store.change_requests import RequestStatus

__all__ = ["router"]

router = APIRouter(tags=["approvals"])
RequestId = Annotated[str, Depends(request_id_dependency)]
RequestNumber = Annotated[int, Path(ge=1, le=2**62)]
Environment = Annotated[str, Path(max_length=40)]


class PolicyBody(BodyModel):
    required_approvals: int = Field(ge=0, le=5)
    allow_self_approval: bool = False


class Decision(BodyModel):
    reason: str | None = Field(default=None, max_length=2000)


def get_approvals(request: Request) -> ApprovalService:
    """The app's ``ApprovalService`` (made by ``create_app``)."""
    return request.app.state.approvals  # type: ignore[no-any-return]


Service = Annotated[ApprovalService, Depends(get_approvals)]


def _statuses(raw: list[str] | None) -> list[RequestStatus] | None:
    if not raw:
        return None
    try:
        return [RequestStatus(s) for s in raw]
    except ValueError:
        raise ValidationError(
            f"status must be among {', '.join(RequestStatus)}, got {raw!r:.80}", field="status"
        ) from None


# ------------------------------------------------------------ policies
@router.get("/admin/environments/{env}/policy")
def get_policy(env: Environment, service: Service, principal: Principal = Reader) -> dict[str, Any]:
    return service.policy(principal, env).to_dict()


@router.put("/admin/environments/{env}/policy")
def put_policy(
    env: Environment,
    body: PolicyBody,
    service: Service,
    rid: RequestId,
    principal: Principal = Reader,
) -> dict[str, Any]:
    policy = service.set_policy(
        principal, env, body.required_approvals, body.allow_self_approval, request_id=rid
    )
    return policy.to_dict()


# ------------------------------------------------------------ change requests
@router.get("/admin/change-requests")
def list_requests(
    service: Service,
    principal: Principal = Reader,
    status: Annotated[list[str] | None, Query(max_length=6)] = None,
    environment: Annotated[str | None, Query(max_length=40)] = None,
    flag: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    items = service.list_requests(
        principal, status=_statuses(status), environment=environment, flag=flag, limit=limit
    )
    return {"items": [r.to_dict() for r in items]}


@router.get("/admin/change-requests/{request_id}")
def show_request(
    request_id: RequestNumber, service: Service, principal: Principal = Reader
) -> dict[str, Any]:
    return service.get_request(principal, request_id).to_dict()


@router.patch("/admin/change-requests/{request_id}")
def edit_request(
    request_id: RequestNumber, body: StateUpdate, service: Service, principal: Principal = Reader
) -> dict[str, Any]:
    """The author replaces the change; every approval so far drops."""
    return service.edit(principal, request_id, body.to_change(), reason=body.reason).to_dict()


@router.post("/admin/change-requests/{request_id}/approve")
def approve_request(
    request_id: RequestNumber, service: Service, rid: RequestId, principal: Principal = Reader
) -> dict[str, Any]:
    return service.approve(principal, request_id, request_id_header=rid).to_dict()


@router.post("/admin/change-requests/{request_id}/reject")
def reject_request(
    request_id: RequestNumber,
    service: Service,
    principal: Principal = Reader,
    body: Annotated[Decision | None, Body()] = None,
) -> dict[str, Any]:
    reason = body.reason if body is not None else None
    return service.reject(principal, request_id, reason=reason).to_dict()


@router.post("/admin/change-requests/{request_id}/cancel")
def cancel_request(
    request_id: RequestNumber,
    service: Service,
    principal: Principal = Reader,
    body: Annotated[Decision | None, Body()] = None,
) -> dict[str, Any]:
    reason = body.reason if body is not None else None
    return service.cancel(principal, request_id, reason=reason).to_dict()


@router.post("/admin/change-requests/{request_id}/apply")
def apply_request(
    request_id: RequestNumber, service: Service, rid: RequestId, principal: Principal = Reader
) -> dict[str, Any]:
    return service.apply(principal, request_id, request_id_header=rid).to_dict()


# ------------------------------------------------------------ break-glass reviews
@router.get("/admin/reviews")
def list_reviews(
    service: Service,
    principal: Principal = Reader,
    include_closed: Annotated[bool, Query(alias="all")] = False,
) -> dict[str, Any]:
    items = service.reviews(principal, open_only=not include_closed)
    return {"items": [i.to_dict() for i in items]}


@router.post("/admin/reviews/{item_id}/acknowledge")
def acknowledge_review(
    item_id: RequestNumber, service: Service, principal: Principal = Reader
) -> dict[str, Any]:
    return service.acknowledge(principal, item_id).to_dict()
