"""SDK telemetry: live instances, evaluation totals, time-bucketed counters.

Revision ID: 0002_sdk
Revises: 0001_core
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_sdk"
down_revision = "0001_core"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sdk_instances",
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("app", sa.String(200), nullable=True),
        sa.Column("applied_version", sa.BigInteger, nullable=False),
        sa.Column("report_interval", sa.Float, nullable=False),
        sa.Column("closed", sa.Boolean, nullable=False),
        sa.Column("last_seen_at", TZ, nullable=False),
    )
    op.create_index(
        "ix_sdk_instances_environment_seen", "sdk_instances", ["environment", "last_seen_at"]
    )
    op.create_table(
        "sdk_flag_evaluations",
        sa.Column("flag_key", sa.String(100), primary_key=True),
        sa.Column("environment", sa.String(40), primary_key=True),
        sa.Column("evaluations_on", sa.BigInteger, nullable=False),
        sa.Column("evaluations_off", sa.BigInteger, nullable=False),
        sa.Column("seen_on", sa.Boolean, nullable=False),
        sa.Column("seen_off", sa.Boolean, nullable=False),
        sa.Column("first_evaluated_at", TZ, nullable=False),
        sa.Column("last_evaluated_at", TZ, nullable=False),
    )
    op.create_table(
        "sdk_counters",
        sa.Column("flag_key", sa.String(100), primary_key=True),
        sa.Column("environment", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("bucket_at", TZ, primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_sdk_counters_bucket_at", "sdk_counters", ["bucket_at"])


def downgrade() -> None:
    op.drop_index("ix_sdk_counters_bucket_at", table_name="sdk_counters")
    op.drop_table("sdk_counters")
    op.drop_table("sdk_flag_evaluations")
    op.drop_index("ix_sdk_instances_environment_seen", table_name="sdk_instances")
    op.drop_table("sdk_instances")
