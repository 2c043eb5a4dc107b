"""Telemetry rows carry the token that wrote them (#14). Placeholder until filled.

Revision ID: 0008_telemetry_tokens
Revises: 0007_console
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0008_telemetry_tokens"
down_revision = "0007_console"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
