"""Core schema: environments, flags, per-environment states, history, tokens.

Revision ID: 0001_core
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

APPEND_ONLY_FUNCTION = """
CREATE OR REPLACE FUNCTION flagrail_history_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'history is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def upgrade() -> None:
    environments = op.create_table(
        "environments",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_table(
        "flags",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("archived_at", TZ, nullable=True),
    )
    op.create_table(
        "flag_states",
        sa.Column("flag_key", sa.String(100), sa.ForeignKey("flags.key"), primary_key=True),
        sa.Column(
            "environment", sa.String(40), sa.ForeignKey("environments.name"), primary_key=True
        ),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("rollout", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tenants_on", sa.JSON, nullable=False),
        sa.Column("tenants_off", sa.JSON, nullable=False),
        sa.Column("killed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("kill_reason", sa.Text, nullable=True),
        sa.Column("killed_at", TZ, nullable=True),
        sa.Column("killed_by", sa.String(200), nullable=True),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "history",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("flag", sa.String(100), nullable=True),
        sa.Column("environment", sa.String(40), nullable=True),
        sa.Column("before", sa.JSON, nullable=True),
        sa.Column("after", sa.JSON, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("request_id", sa.String(100), nullable=True),
        sa.Column("env_version", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_history_flag_id", "history", ["flag", "id"])
    op.create_index("ix_history_environment_id", "history", ["environment", "id"])
    op.create_index("ix_history_at", "history", ["at"])
    op.create_index("ix_history_actor_id", "history", ["actor", "id"])
    op.create_index("ix_history_action_id", "history", ["action", "id"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("environments", sa.JSON, nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
    )
    now = datetime.now(UTC)
    op.bulk_insert(
        environments,
        [
            {"name": name, "created_at": now, "version": 0}
            for name in ("development", "staging", "beta", "production")
        ],
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY_FUNCTION)
        op.execute(
            "CREATE TRIGGER history_append_only BEFORE UPDATE OR DELETE ON history "
            "FOR EACH ROW EXECUTE FUNCTION flagrail_history_append_only()"
        )
    else:
        for op_name in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER history_no_{op_name.lower()} BEFORE {op_name} ON history "
                f"BEGIN SELECT RAISE(ABORT, 'history is append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS history_append_only ON history")
        op.execute("DROP FUNCTION IF EXISTS flagrail_history_append_only()")
    for name in ("tokens", "history", "flag_states", "flags", "environments"):
        op.drop_table(name)
