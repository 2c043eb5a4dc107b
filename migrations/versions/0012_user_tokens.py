"""Tokens issued to a console user (#15). Placeholder until filled.

Revision ID: 0012_user_tokens
Revises: 0011_webhooks
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0012_user_tokens"
down_revision = "0011_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
