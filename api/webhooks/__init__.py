"""Webhooks: every change, signed, to the team's tools, from a transactional outbox.

Module map: ``model`` (subscriptions, validation), ``events`` (history row ->
event, who receives it), ``signing`` (Standard Webhooks), ``slack`` (Slack
messages), ``tables`` and ``store`` (SQL: outbox fan-out, leased claims, the
delivery log), ``worker`` (the delivery loop), ``metrics``, ``settings``.
"""

from __future__ import annotations

from api.webhooks.events import WebhookEvent, event_from_history, receives, standard_payload
from api.webhooks.model import (
    EVENT_TYPES,
    Format,
    Subscription,
    SubscriptionSpec,
    parse_subscription,
    parse_update,
)
from api.webhooks.signing import generate_secret, sign, signed_headers, verify
from api.webhooks.slack import slack_message
from api.webhooks.store import Claim, DeliveryRecord, Status, WebhookStore
from api.webhooks.worker import DeliveryWorker, WorkerSettings, retry_delay

__all__ = [
    "EVENT_TYPES",
    "Claim",
    "DeliveryRecord",
    "DeliveryWorker",
    "Format",
    "Status",
    "Subscription",
    "SubscriptionSpec",
    "WebhookEvent",
    "WebhookStore",
    "WorkerSettings",
    "event_from_history",
    "generate_secret",
    "parse_subscription",
    "parse_update",
    "receives",
    "retry_delay",
    "sign",
    "signed_headers",
    "slack_message",
    "standard_payload",
    "verify",
]
