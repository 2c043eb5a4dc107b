"""Webhook events from history rows, and which subscription receives which: pure.

One history row is one event. Its ``sequence`` is the row's id, so a receiver sees
a monotonically increasing number per subscription (gaps are rows it was not sent).
``event_from_history`` maps a row (as a mapping of the ``history`` columns) to a
``WebhookEvent``; ``receives`` decides whether a subscription gets it, with the
scope rule: an event of an environment outside the subscription creator's scope
never reaches it, and token/user events reach only subscriptions an unscoped admin
made. ``standard_payload`` is the JSON body of a ``standard`` delivery.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from api.webhooks.model import ADMIN_EVENT_TYPES, Subscription

__all__ = [
    "Via",
    "WebhookEvent",
    "event_from_history",
    "event_type",
    "receives",
    "standard_payload",
]

_TYPES = {
    "flag.create": "flag.created",
    "flag.update": "flag.updated",
    "flag.archive": "flag.archived",
    "state.update": "state.updated",
    "kill": "state.killed",
    "unkill": "state.unkilled",
    "environment.create": "environment.created",
    "token.create": "token.created",
    "token.revoke": "token.revoked",
    "user.create": "user.created",
    "user.update": "user.updated",
    "user.delete": "user.deleted",
    "webhook.create": "webhook.created",
    "webhook.update": "webhook.updated",
    "webhook.delete": "webhook.deleted",
    "webhook.pause": "webhook.paused",
    "webhook.resume": "webhook.resumed",
    "webhook.redeliver": "webhook.redelivered",
}
_PLAN_VERBS = {
    "create": "created",
    "stage": "advanced",
    "pause": "paused",
    "resume": "resumed",
    "abort": "aborted",
    "rollback": "rolled_back",
    "complete": "completed",
}


class Via(StrEnum):
    """What made a change: a ``guard`` token (automation that kills), a rollout
    ``plan`` or schedule, a ``person`` (any other token or the CLI), or the ``system``."""

    GUARD = "guard"
    PLAN = "plan"
    PERSON = "person"
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """One change as subscribers see it. ``sequence`` is the history row's id."""

    sequence: int
    type: str
    action: str
    at: datetime
    flag: str | None
    environment: str | None
    before: Any
    after: Any
    actor: str
    token_id: str | None
    token_name: str | None
    claimed_actor: str | None
    reason: str | None
    request_id: str | None
    via: Via
    # The environment's version a state.update/kill/unkill made (None for other rows).
    env_version: int | None = None

    @property
    def id(self) -> str:
        """The event's stable id: ``evt_<sequence>``."""
        return f"evt_{self.sequence}"

    @property
    def stands_out(self) -> bool:
        """A kill, or anything a guard did: what a team must notice at 3 a.m."""
        return self.type == "state.killed" or self.via is Via.GUARD


def event_type(action: str, plan_kind: str | None = None) -> str:
    """The event type of a history ``action``. Plan actions of a plan of kind
    ``schedule`` are ``schedule.*`` (its one stage: ``schedule.applied``). An action
    this module does not know keeps its own name (only a ``*`` pattern matches it)."""
    if action in _TYPES:
        return _TYPES[action]
    group, _, verb = action.partition(".")
    if group == "plan" and verb in _PLAN_VERBS:
        if plan_kind == "schedule":
            return f"schedule.{'applied' if verb == 'stage' else _PLAN_VERBS[verb]}"
        return f"plan.{_PLAN_VERBS[verb]}"
    return action


def event_from_history(
    row: Mapping[str, Any], *, token_role: str | None = None, plan_kind: str | None = None
) -> WebhookEvent:
    """The event of one history row (the ``history`` table's columns). ``token_role``
    is the role of the row's token, if it had one; ``plan_kind`` the kind of the plan
    a ``plan.*`` row is about."""
    actor = str(row["actor"])
    if token_role == "guard" or row.get("claimed_actor"):
        via = Via.GUARD
    elif actor.startswith("plan:"):
        via = Via.PLAN
    elif row.get("token_id") or actor.startswith("cli:"):
        via = Via.PERSON
    else:
        via = Via.SYSTEM
    return WebhookEvent(
        sequence=int(row["id"]),
        type=event_type(str(row["action"]), plan_kind),
        action=str(row["action"]),
        at=row["at"],
        flag=row.get("flag"),
        environment=row.get("environment"),
        before=row.get("before"),
        after=row.get("after"),
        actor=actor,
        token_id=row.get("token_id"),
        token_name=row.get("token_name"),
        claimed_actor=row.get("claimed_actor"),
        reason=row.get("reason"),
        request_id=row.get("request_id"),
        via=via,
        env_version=row.get("env_version"),
    )


def receives(subscription: Subscription, event: WebhookEvent) -> bool:
    """Whether ``subscription`` is sent ``event`` (paused or not: a paused one keeps
    its deliveries for later). The creator's scope comes first: no filter widens it."""
    spec = subscription.spec
    if event.type in ADMIN_EVENT_TYPES and not (subscription.admin and subscription.scope is None):
        return False
    if event.environment is not None:
        if subscription.scope is not None and event.environment not in subscription.scope:
            return False
        if spec.environments is not None and event.environment not in spec.environments:
            return False
    elif subscription.scope is not None and event.type.startswith("environment."):
        return False
    if spec.flags is not None and (
        event.flag is None or not any(fnmatch.fnmatchcase(event.flag, p) for p in spec.flags)
    ):
        return False
    return any(fnmatch.fnmatchcase(event.type, p) for p in spec.events)


def standard_payload(event: WebhookEvent) -> dict[str, Any]:
    """The body of a ``standard`` delivery, in the Standard Webhooks shape
    (``type``, ``timestamp``, ``data``) with the event's id and sequence on top."""
    return {
        "id": event.id,
        "sequence": event.sequence,
        "type": event.type,
        "timestamp": event.at.isoformat(),
        "data": {
            "action": event.action,
            "flag": event.flag,
            "environment": event.environment,
            "before": event.before,
            "after": event.after,
            "actor": {
                "name": event.actor,
                "token_id": event.token_id,
                "token_name": event.token_name,
                "claimed": event.claimed_actor,
            },
            "reason": event.reason,
            "request_id": event.request_id,
            "via": event.via.value,
            "env_version": event.env_version,
        },
    }
