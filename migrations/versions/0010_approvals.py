"""Approvals: environment policies, change requests, approvals (#16). Placeholder until filled.

Revision ID: 0010_approvals
Revises: 0009_typed_flags
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0010_approvals"
down_revision = "0009_typed_flags"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
