"""The webhook tables.

For now they live on a ``MetaData`` of their own (with the shared naming
convention), so importing this module leaves ``flags.store.tables.metadata``, which
``flagrail db check`` compares with a database, as the migrations made it. Once
they have their migration they move into ``flags.store.tables`` and this module
re-exports them.

``webhook_outbox`` gets one row per history row, written in the history row's
own transaction (the transactional outbox); the delivery worker fans each one out
into ``webhook_deliveries`` (one per receiving subscription, unique per
subscription and sequence) and deletes it. A delivery is ``pending`` until it is
``delivered`` or, after its retry window, ``failed``; while a worker sends it, it
holds a lease (``lease_owner``, ``lease_expires_at``) that another worker takes
over once it has expired.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

from flags.store.tables import NAMING, BigId

__all__ = ["metadata", "webhook_deliveries", "webhook_outbox", "webhook_subscriptions"]

metadata = MetaData(naming_convention=NAMING)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("url", String(2000), nullable=False),
    Column("events", JSON, nullable=False),
    Column("environments", JSON, nullable=True),  # null = every environment
    Column("flags", JSON, nullable=True),  # null = every flag, else fnmatch patterns
    Column("format", String(20), nullable=False),
    Column("description", Text, nullable=False, default="", server_default=text("''")),
    Column("secret", String(100), nullable=False),
    Column("paused", Boolean, nullable=False, default=False, server_default=false()),
    # The creating token's environment scope (null: every one) and whether it was an
    # unscoped admin (only then do token and user events reach the subscription).
    Column("scope", JSON, nullable=True),
    Column("admin", Boolean, nullable=False, default=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

webhook_outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("history_id", BigInteger, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column(
        "subscription_id",
        String(32),
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # The history row's id.
    Column("sequence", BigInteger, nullable=False),
    Column("event_type", String(60), nullable=False),
    Column("flag", String(100), nullable=True),
    Column("environment", String(40), nullable=True),
    # The request body, rendered once at fan-out (JSON text).
    Column("body", Text, nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0, server_default="0"),
    # When the change was committed (the history row's ``at``): the lag's start.
    Column("event_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Column("response_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    # The first 1 KB of the last response body.
    Column("response_body", Text, nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("subscription_id", "sequence"),
)
Index(
    "ix_webhook_deliveries_subscription_status",
    webhook_deliveries.c.subscription_id,
    webhook_deliveries.c.status,
    webhook_deliveries.c.sequence,
)
Index(
    "ix_webhook_deliveries_status_next",
    webhook_deliveries.c.status,
    webhook_deliveries.c.next_attempt_at,
)
