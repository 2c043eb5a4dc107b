"""Tokens issued to a console user (#15): ``tokens.user_name``.

A token with a user stops authenticating while that user is disabled. Existing
tokens get NULL: they belong to no user and work as before.

Revision ID: 0012_user_tokens
Revises: 0011_webhooks
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_user_tokens"
down_revision = "0011_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tokens", sa.Column("user_name", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("user_name")
