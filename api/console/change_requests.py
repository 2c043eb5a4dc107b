"""The console's change requests page (#16): pending requests with their diffs, approve
and reject, and the break-glass review items waiting for acknowledgement.

A thin front end over ``ApprovalService`` (``app.state.approvals``), as
``/admin/change-requests`` is: the session's user is the person who approves, so
a console user cannot approve their own request, and their API tokens count as
the same person. ``api.app.create_app`` includes ``router``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.console.pages import _page, _post, _render, _see_other, _text
from api.service import Principal
from api.service.approvals import ApprovalService
from flags.errors import ValidationError
from flags.store.change_requests import OPEN
from flags.store.users import Session

__all__ = ["router"]

router = APIRouter(prefix="/console", include_in_schema=False)
PAGE = "/console/change-requests"


def _approvals(request: Request) -> ApprovalService:
    return request.app.state.approvals  # type: ignore[no-any-return]


def _pending(value: str | None) -> list[int]:
    """The request numbers of ``?pending=`` (a console change just held for approval);
    anything but comma-separated numbers is ignored (it is only a notice)."""
    parts = (value or "").split(",")
    return [int(p) for p in parts if p.isdigit() and len(p) <= 18][:20]


@router.get("/change-requests")
def change_requests_page(request: Request, pending: str | None = None) -> Response:
    def build(session: Session, principal: Principal) -> Response:
        service = _approvals(request)
        requests = service.list_requests(principal, status=list(OPEN))
        reviews = service.reviews(principal)
        return _render(
            request,
            "change_requests.html",
            session,
            requests=requests,
            reviews=reviews,
            pending=_pending(pending),
        )

    return _page(request, build)


@router.post("/change-requests/{number}/{decision}")
async def decide(request: Request, number: int, decision: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        service = _approvals(request)
        if decision == "approve":
            service.approve(principal, number, request_id_header=request.state.request_id)
        elif decision == "reject":
            service.reject(principal, number, reason=_text(form, "reason") or None)
        else:
            raise ValidationError("decision must be approve or reject", field="decision")
        return _see_other(PAGE)

    return await _post(request, act)


@router.post("/reviews/{item}/acknowledge")
async def acknowledge(request: Request, item: int) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        _approvals(request).acknowledge(principal, item)
        return _see_other(PAGE)

    return await _post(request, act)
