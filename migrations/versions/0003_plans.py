"""Rollout plans and scheduled changes.

Revision ID: 0003_plans
Revises: 0001_core
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_plans"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("flag_key", sa.String(100), sa.ForeignKey("flags.key"), nullable=False),
        sa.Column("environment", sa.String(40), sa.ForeignKey("environments.name"), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("stage", sa.Integer, nullable=True),
        sa.Column("stage_started_at", TZ, nullable=True),
        sa.Column("start_at", TZ, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_plans_status", "plans", ["status"])
    op.create_index("ix_plans_flag_key_environment", "plans", ["flag_key", "environment"])


def downgrade() -> None:
    op.drop_table("plans")
