"""Approvals: environment policies, change requests, approvals, break-glass review items (#16).

Revision ID: 0010_approvals
Revises: 0009_typed_flags
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_approvals"
down_revision = "0009_typed_flags"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
# BigInteger autoincrement that SQLite also accepts as its rowid alias (as tables.BigId).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "environment_policies",
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("allow_self_approval", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("environment", name="pk_environment_policies"),
    )
    op.create_table(
        "change_requests",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("flag_key", sa.String(100), nullable=False),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("change", sa.JSON(), nullable=False),
        sa.Column("base_version", sa.BigInteger(), nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("author_person", sa.String(200), nullable=False),
        sa.Column("author_token_id", sa.String(32), nullable=True),
        sa.Column("author_token_name", sa.String(200), nullable=True),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decided_at", TZ, nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_change_requests"),
    )
    op.create_index("ix_change_requests_status", "change_requests", ["status", "id"])
    op.create_index(
        "ix_change_requests_flag_key_environment", "change_requests", ["flag_key", "environment"]
    )
    op.create_table(
        "change_request_approvals",
        sa.Column("request_id", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("person", sa.String(200), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=True),
        sa.Column("at", TZ, nullable=False),
        sa.PrimaryKeyConstraint(
            "request_id", "revision", "person", name="pk_change_request_approvals"
        ),
    )
    op.create_table(
        "review_items",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("flag_key", sa.String(100), nullable=False),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("person", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("acknowledged_by", sa.String(200), nullable=True),
        sa.Column("acknowledged_person", sa.String(200), nullable=True),
        sa.Column("acknowledged_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_review_items"),
    )
    op.create_index("ix_review_items_acknowledged_at", "review_items", ["acknowledged_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_review_items_acknowledged_at", table_name="review_items")
    op.drop_table("review_items")
    op.drop_table("change_request_approvals")
    op.drop_index("ix_change_requests_flag_key_environment", table_name="change_requests")
    op.drop_index("ix_change_requests_status", table_name="change_requests")
    op.drop_table("change_requests")
    op.drop_table("environment_policies")
