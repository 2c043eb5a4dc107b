"""Webhook subscriptions as admin operations: the one front door the HTTP routes
and the CLI both call.

Every operation needs an admin (``Operation.MANAGE_WEBHOOKS``). A subscription
remembers its creator's environment scope and only ever receives events inside
it; a scoped admin names only environments of its own, and sees, changes and
deletes only subscriptions whose scope lies within its own. Each change of a
subscription is recorded in the history in its own transaction (``webhook.*``
actions; never the secret), and those rows reach only unscoped admins'
subscriptions like token changes do.
"""

from __future__ import annotations

from typing import Any

from api.service.principal import Operation, Principal
from api.webhooks.model import Subscription, parse_subscription, parse_update
from api.webhooks.store import DeliveryRecord, WebhookStore
from flags.errors import NotFoundError
from flags.model import Role

__all__ = ["WebhookService"]


class WebhookService:
    """Subscriptions and their delivery logs, with role and scope checks. Thread-safe
    (the store is); constructing it does no I/O."""

    def __init__(self, store: WebhookStore) -> None:
        self.store = store

    def create(
        self, principal: Principal, body: object, *, request_id: str | None = None
    ) -> tuple[Subscription, str]:
        """Validate and store a subscription; returns it and its secret (the only time
        the secret is shown). Raises ``ValidationError`` naming the field,
        ``ForbiddenError`` for an environment outside the caller's scope."""
        principal.allow(Operation.MANAGE_WEBHOOKS)
        spec = parse_subscription(body)
        if spec.environments is not None:
            principal.check_envs(spec.environments)
        return self.store.create(
            spec,
            created_by=str(principal.actor),
            scope=principal.scope,
            admin=principal.role is Role.ADMIN and principal.scope is None,
            actor=principal.actor,
            request_id=request_id,
        )

    def list(self, principal: Principal) -> list[Subscription]:
        principal.allow(Operation.MANAGE_WEBHOOKS)
        return [s for s in self.store.list() if principal.within_scope(s.scope)]

    def get(self, principal: Principal, sub_id: str) -> Subscription:
        """Raises ``NotFoundError`` for an unknown id or one outside the caller's scope."""
        principal.allow(Operation.MANAGE_WEBHOOKS)
        sub = self.store.get(sub_id)
        if not principal.within_scope(sub.scope):
            raise NotFoundError(f"webhook {sub_id!r} not found", field="id")
        return sub

    def update(
        self, principal: Principal, sub_id: str, body: object, *, request_id: str | None = None
    ) -> Subscription:
        """Change the fields ``body`` names (a partial update)."""
        current = self.get(principal, sub_id)
        spec = parse_update(current.spec, body)
        if spec.environments is not None:
            principal.check_envs(spec.environments)
        return self.store.update(sub_id, spec, actor=principal.actor, request_id=request_id)

    def set_paused(
        self, principal: Principal, sub_id: str, paused: bool, *, request_id: str | None = None
    ) -> Subscription:
        self.get(principal, sub_id)
        return self.store.set_paused(sub_id, paused, actor=principal.actor, request_id=request_id)

    def delete(self, principal: Principal, sub_id: str, *, request_id: str | None = None) -> None:
        self.get(principal, sub_id)
        self.store.delete(sub_id, actor=principal.actor, request_id=request_id)

    def deliveries(self, principal: Principal, sub_id: str, **query: Any) -> list[DeliveryRecord]:
        """The delivery log (``status``, ``limit``, ``before`` as the store takes them)."""
        self.get(principal, sub_id)
        return self.store.deliveries(sub_id, **query)

    def redeliver(
        self, principal: Principal, sub_id: str, delivery_id: int, *, request_id: str | None = None
    ) -> None:
        self.get(principal, sub_id)
        self.store.redeliver(sub_id, delivery_id, actor=principal.actor, request_id=request_id)
