"""The webhook tables, re-exported from the one metadata in ``flags.store.tables``
(section "#17 webhooks"), which migration ``0011_webhooks`` creates.

``webhook_outbox`` gets one row per history row, written by
``flags.store.history.record_changes`` in the history row's own transaction (the
transactional outbox); the delivery worker fans each one out into
``webhook_deliveries`` (one per receiving subscription, unique per subscription and
sequence) and deletes it. A delivery is ``pending`` until it is ``delivered`` or,
after its retry window, ``failed``; while a worker sends it, it holds a lease
(``lease_owner``, ``lease_expires_at``) that another worker takes over once it has
expired.
"""

from __future__ import annotations

from flags.store.tables import (
    metadata,
    webhook_deliveries,
    webhook_outbox,
    webhook_subscriptions,
)

__all__ = ["metadata", "webhook_deliveries", "webhook_outbox", "webhook_subscriptions"]
