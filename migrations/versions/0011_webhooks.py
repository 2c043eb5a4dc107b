"""Webhooks: subscriptions, outbox, deliveries (#17). Placeholder until filled.

Revision ID: 0011_webhooks
Revises: 0010_approvals
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0011_webhooks"
down_revision = "0010_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
