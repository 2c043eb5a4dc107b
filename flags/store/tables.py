"""SQLAlchemy 2 table definitions: the schema that Alembic migrations create.

The schema is made only by ``migrations/``. :data:`metadata` is the one
``MetaData`` of every table: the core tables here, the SDK telemetry tables in
``flags.store.telemetry`` and the plans table in ``flags.plans.store``;
``flags.store.schema.metadata`` imports all three, and that is what
``migrations/env.py`` and ``flagrail db check`` compare with a database. JSON
columns hold tenant lists, tags, token scopes and history before/after states.
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
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(200), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)
