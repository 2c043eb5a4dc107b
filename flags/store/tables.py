"""SQLAlchemy 2 table definitions: the schema that Alembic migrations create.

The schema is made only by ``migrations/``. :data:`metadata` is the one
``MetaData`` of every table, and every table is defined here: the core tables,
the SDK telemetry tables (read and written by ``flags.store.telemetry``) and the
plans table (``flags.plans.store``). It is what ``migrations/env.py`` and
``flagrail db check`` compare with a database. JSON columns hold tenant lists,
tags, token scopes and history before/after states.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
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

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# BigInteger autoincrement that SQLite also accepts as its rowid alias.
BigId = BigInteger().with_variant(Integer(), "sqlite")

environments = Table(
    "environments",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Grows by one with every committed flag-state change in this environment.
    Column("version", BigInteger, nullable=False, default=0, server_default="0"),
)

flags = Table(
    "flags",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("description", Text, nullable=False, default="", server_default=text("''")),
    Column("kind", String(20), nullable=False),
    Column("owner", String(200), nullable=True),
    Column("tags", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("archived", Boolean, nullable=False, default=False, server_default=false()),
    Column("archived_at", DateTime(timezone=True), nullable=True),
    # Typed flags (#19): what the flag serves, its variants ([{"name", "value"}], null
    # for a boolean flag's on/off), and the off/on variants a new environment starts with.
    Column("type", String(20), nullable=False, default="boolean", server_default="boolean"),
    Column("variants", JSON, nullable=True),
    Column("off_variant", String(64), nullable=True),
    Column("on_variant", String(64), nullable=True),
)

flag_states = Table(
    "flag_states",
    metadata,
    Column("flag_key", String(100), ForeignKey("flags.key"), primary_key=True),
    Column("environment", String(40), ForeignKey("environments.name"), primary_key=True),
    Column("enabled", Boolean, nullable=False, default=False, server_default=false()),
    Column("rollout", Integer, nullable=False, default=0, server_default="0"),
    Column("tenants_on", JSON, nullable=False),
    Column("tenants_off", JSON, nullable=False),
    Column("killed", Boolean, nullable=False, default=False, server_default=false()),
    Column("kill_reason", Text, nullable=True),
    Column("killed_at", DateTime(timezone=True), nullable=True),
    Column("killed_by", String(200), nullable=True),
    Column("version", BigInteger, nullable=False, default=0, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Typed flags (#19): null on a boolean flag. split: [[variant, weight], ...] in
    # order; tenant_variants: {tenant: variant}.
    Column("off_variant", String(64), nullable=True),
    Column("on_variant", String(64), nullable=True),
    Column("split", JSON, nullable=True),
    Column("tenant_variants", JSON, nullable=True),
)
# The console's flags grid (#15, 0013): live flags counted and walked in key order
# from an index; the state filter's semi-join (killed) and per-flag probe (other
# words, all killed = false) read this index, not the rows.
Index("ix_flags_archived_key", flags.c.archived, flags.c.key)
Index(
    "ix_flag_states_killed_key",
    flag_states.c.killed,
    flag_states.c.flag_key,
    flag_states.c.enabled,
    flag_states.c.rollout,
    flag_states.c.environment,
)

history = Table(
    "history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("action", String(40), nullable=False),
    Column("flag", String(100), nullable=True),
    Column("environment", String(40), nullable=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
    Column("reason", Text, nullable=True),
    Column("request_id", String(100), nullable=True),
    # Environment version produced by this change (state changes only).
    Column("env_version", BigInteger, nullable=True),
    # The API token that made the change (null: a plan, the server, the break-glass
    # CLI), and the actor a guard token claimed (X-Flagrail-Actor), kept apart.
    Column("token_id", String(32), nullable=True),
    Column("token_name", String(200), nullable=True),
    Column("claimed_actor", String(200), nullable=True),
)
Index("ix_history_flag_id", history.c.flag, history.c.id)
Index("ix_history_environment_id", history.c.environment, history.c.id)
Index("ix_history_at", history.c.at)
Index("ix_history_actor_id", history.c.actor, history.c.id)
Index("ix_history_action_id", history.c.action, history.c.id)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    Column("environments", JSON, nullable=True),  # null = every environment
    Column("flags", JSON, nullable=True),  # null = every flag, else fnmatch patterns
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # #15: the console user this token was issued to (null: none); the token stops
    # authenticating while that user is disabled or gone.
    Column("user_name", String(64), nullable=True),
)

# ------------------------------------------------------------ SDK telemetry
# What SDKs report back (flags.store.telemetry reads and writes them).
sdk_instances = Table(
    "sdk_instances",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("environment", String(40), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("app", String(200), nullable=True),
    Column("applied_version", BigInteger, nullable=False),
    Column("report_interval", Float, nullable=False),
    Column("closed", Boolean, nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    # #14: the token that first reported the instance owns it (its id; null: a row
    # from before 0008, claimed by the first token that reports it after the upgrade).
    Column("token_id", String(200), nullable=True),
)
Index(
    "ix_sdk_instances_environment_seen", sdk_instances.c.environment, sdk_instances.c.last_seen_at
)
Index("ix_sdk_instances_token_seen", sdk_instances.c.token_id, sdk_instances.c.last_seen_at)

sdk_flag_evaluations = Table(
    "sdk_flag_evaluations",
    metadata,
    Column("flag_key", String(100), primary_key=True),
    Column("environment", String(40), primary_key=True),
    Column("evaluations_on", BigInteger, nullable=False),
    Column("evaluations_off", BigInteger, nullable=False),
    Column("seen_on", Boolean, nullable=False),
    Column("seen_off", Boolean, nullable=False),
    Column("first_evaluated_at", DateTime(timezone=True), nullable=False),
    Column("last_evaluated_at", DateTime(timezone=True), nullable=False),
)

sdk_counters = Table(
    "sdk_counters",
    metadata,
    Column("flag_key", String(100), primary_key=True),
    Column("environment", String(40), primary_key=True),
    Column("name", String(100), primary_key=True),
    Column("bucket_at", DateTime(timezone=True), primary_key=True),
    # #14: the token that reported the counts ("" for rows from before 0008).
    Column("token_id", String(200), primary_key=True),
    Column("value", Float, nullable=False),
)
Index("ix_sdk_counters_bucket_at", sdk_counters.c.bucket_at)

# ------------------------------------------------------------ rollout plans
# Plans and scheduled changes (flags.plans.store reads and writes them).
plans = Table(
    "plans",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),
    Column("flag_key", String(100), ForeignKey("flags.key"), nullable=False),
    Column("environment", String(40), ForeignKey("environments.name"), nullable=False),
    # The body as parse_plan / parse_schedule read it back (spec_to_dict).
    Column("spec", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    # Index of the last applied stage; null before the first.
    Column("stage", Integer, nullable=True),
    Column("stage_started_at", DateTime(timezone=True), nullable=True),
    Column("start_at", DateTime(timezone=True), nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Grows by one with every change of this row: the compare-and-set of every step.
    Column("version", BigInteger, nullable=False, default=0, server_default="0"),
)
Index("ix_plans_status", plans.c.status)
Index("ix_plans_flag_key_environment", plans.c.flag_key, plans.c.environment)


# The console's people and sessions (issue #15).
console_users = Table(
    "console_users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", String(200), nullable=False),
    Column("role", String(20), nullable=False),
    # None: every environment (as a token's scope).
    Column("environments", JSON, nullable=True),
    Column("disabled", Boolean, nullable=False, default=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    # SHA-256 of the session id: the id itself is never stored.
    Column("id_hash", String(64), primary_key=True),
    Column("user_name", String(64), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False, server_default=false()),
)

console_environment_protection = Table(
    "console_environment_protection",
    metadata,
    Column("environment", String(40), primary_key=True),
    Column("protected", Boolean, nullable=False),
)


# ------------------------------------------------------------ #16 approvals
# Environment policies, change requests, their approvals and break-glass review
# items (flags.store.change_requests reads and writes them).
environment_policies = Table(
    "environment_policies",
    metadata,
    Column("environment", String(40), primary_key=True),
    Column("required_approvals", Integer, nullable=False, default=0, server_default="0"),
    Column("allow_self_approval", Boolean, nullable=False, default=False, server_default=false()),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", String(200), nullable=False),
)

change_requests = Table(
    "change_requests",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),
    Column("flag_key", String(100), nullable=False),
    Column("environment", String(40), nullable=False),
    # The change as ``change_to_dict`` writes it (kind "state"); {} for "unkill".
    Column("change", JSON, nullable=False),
    # The flag state's version the request was made (or last edited) against, and
    # the states before and after it then: the diff reviewers approve.
    Column("base_version", BigInteger, nullable=False),
    Column("before", JSON, nullable=False),
    Column("after", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    # Grows by one with every edit; approvals count only for the current revision.
    Column("revision", Integer, nullable=False),
    Column("reason", Text, nullable=True),
    Column("author", String(200), nullable=False),
    Column("author_person", String(200), nullable=False),
    Column("author_token_id", String(32), nullable=True),
    Column("author_token_name", String(200), nullable=True),
    Column("required_approvals", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Who rejected, cancelled or applied it, and why (reject/cancel).
    Column("decided_by", String(200), nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("decision_reason", Text, nullable=True),
)
Index("ix_change_requests_status", change_requests.c.status, change_requests.c.id)
Index(
    "ix_change_requests_flag_key_environment",
    change_requests.c.flag_key,
    change_requests.c.environment,
)

change_request_approvals = Table(
    "change_request_approvals",
    metadata,
    Column("request_id", BigInteger, primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("person", String(200), primary_key=True),
    Column("actor", String(200), nullable=False),
    Column("token_id", String(32), nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

review_items = Table(
    "review_items",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("flag_key", String(100), nullable=False),
    Column("environment", String(40), nullable=False),
    Column("before", JSON, nullable=False),
    Column("after", JSON, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("person", String(200), nullable=False),
    Column("token_id", String(32), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("acknowledged_by", String(200), nullable=True),
    Column("acknowledged_person", String(200), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
)
Index("ix_review_items_acknowledged_at", review_items.c.acknowledged_at, review_items.c.id)

# ------------------------------------------------------------ #17 webhooks
# Subscriptions, the transactional outbox and the delivery log (api.webhooks reads
# and writes them). ``webhook_outbox`` gets one row per history row, written by
# flags.store.history in the history row's own transaction; the delivery worker fans
# each one out into ``webhook_deliveries`` (one per receiving subscription) and
# deletes it. A delivery is ``pending`` until ``delivered`` or, after its retry
# window, ``failed``; while a worker sends it, it holds a lease that another worker
# takes over once it has expired.
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
