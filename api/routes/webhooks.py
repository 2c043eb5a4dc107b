"""``/admin/webhooks``: subscribe (the secret answered once), list, show, update,
delete, pause/resume, the delivery log and redelivery. Admins only.

``install(app, store)`` is this feature's one hook into ``create_app``: it adds the
router, the ``WebhookService`` (``app.state.webhooks``) and, unless
``FLAGRAIL_WEBHOOK_WORKER=false``, the delivery worker as a started service.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request

from api.deps import Principal, allowed, request_id_dependency
from api.schemas import NO_NUL
from api.service import Operation
from api.webhooks.service import WebhookService
from api.webhooks.settings import WebhookSettings
from api.webhooks.store import MAX_LOG_PAGE, WebhookStore
from api.webhooks.worker import DeliveryWorker
from flags.store.sql import SqlFlagStore

router = APIRouter(prefix="/admin/webhooks", tags=["webhooks"])
RequestId = Annotated[str, Depends(request_id_dependency)]
Manage = Depends(allowed(Operation.MANAGE_WEBHOOKS))
SubId = Annotated[str, Path(max_length=32, pattern=NO_NUL)]
JsonBody = Annotated[dict[str, Any], Body()]


def get_webhooks(request: Request) -> WebhookService:
    """The app's ``WebhookService`` (made by ``install``)."""
    return request.app.state.webhooks  # type: ignore[no-any-return]


Service = Annotated[WebhookService, Depends(get_webhooks)]


def install(app: FastAPI, store: SqlFlagStore, settings: WebhookSettings | None = None) -> None:
    """Add the webhook routes, service and delivery worker to ``app`` (no I/O)."""
    settings = settings or WebhookSettings()
    webhooks = WebhookStore(store.engine, base_url=settings.public_base_url)
    app.state.webhooks = WebhookService(webhooks)
    if settings.worker:
        worker = DeliveryWorker(webhooks, settings.worker_settings())
        app.state.webhook_worker = worker
        app.state.services.append(worker)
        # A committed flag change wakes the worker at once while any subscription
        # exists (changes from other replicas wait for its poll).
        store.listeners.append(lambda _events: worker.wake_for_change())
    app.include_router(router)


@router.post("", status_code=201)
def create_webhook(
    request: Request,
    body: JsonBody,
    service: Service,
    rid: RequestId,
    principal: Principal = Manage,
) -> dict[str, Any]:
    """The answer holds ``secret`` (``whsec_...``): the only time it is shown."""
    sub, secret = service.create(principal, body, request_id=rid)
    worker = getattr(request.app.state, "webhook_worker", None)
    if worker is not None:
        worker.subscription_added()
    return {**sub.to_dict(), "secret": secret}


@router.get("")
def list_webhooks(service: Service, principal: Principal = Manage) -> dict[str, Any]:
    return {"items": [s.to_dict() for s in service.list(principal)]}


@router.get("/{sub_id}")
def show_webhook(sub_id: SubId, service: Service, principal: Principal = Manage) -> dict[str, Any]:
    return service.get(principal, sub_id).to_dict()


@router.patch("/{sub_id}")
def update_webhook(
    sub_id: SubId, body: JsonBody, service: Service, rid: RequestId, principal: Principal = Manage
) -> dict[str, Any]:
    """A partial update: the fields named change (``environments``/``flags`` null clears)."""
    return service.update(principal, sub_id, body, request_id=rid).to_dict()


@router.delete("/{sub_id}")
def delete_webhook(
    sub_id: SubId, service: Service, rid: RequestId, principal: Principal = Manage
) -> dict[str, Any]:
    service.delete(principal, sub_id, request_id=rid)
    return {"id": sub_id, "deleted": True}


@router.post("/{sub_id}/pause")
def pause_webhook(
    sub_id: SubId, service: Service, rid: RequestId, principal: Principal = Manage
) -> dict[str, Any]:
    """Deliveries keep collecting while paused and go out, in order, on resume."""
    return service.set_paused(principal, sub_id, True, request_id=rid).to_dict()


@router.post("/{sub_id}/resume")
def resume_webhook(
    sub_id: SubId, service: Service, rid: RequestId, principal: Principal = Manage
) -> dict[str, Any]:
    return service.set_paused(principal, sub_id, False, request_id=rid).to_dict()


@router.get("/{sub_id}/deliveries")
def list_deliveries(
    sub_id: SubId,
    service: Service,
    status: Annotated[str | None, Query(max_length=20, pattern=NO_NUL)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_PAGE)] = 100,
    before: Annotated[int | None, Query(ge=0)] = None,
    principal: Principal = Manage,
) -> dict[str, Any]:
    """Newest sequence first; ``before`` pages on (the last ``sequence`` seen)."""
    items = service.deliveries(principal, sub_id, status=status, limit=limit, before=before)
    return {"items": [d.to_dict() for d in items]}


@router.post("/{sub_id}/deliveries/{delivery_id}/redeliver", status_code=202)
def redeliver(
    sub_id: SubId,
    delivery_id: Annotated[int, Path(ge=0)],
    service: Service,
    rid: RequestId,
    principal: Principal = Manage,
) -> dict[str, Any]:
    service.redeliver(principal, sub_id, delivery_id, request_id=rid)
    return {"id": delivery_id, "status": "pending"}
