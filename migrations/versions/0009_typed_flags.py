"""Typed flags: value type and variants persisted (#19). Placeholder until filled.

Revision ID: 0009_typed_flags
Revises: 0008_telemetry_tokens
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0009_typed_flags"
down_revision = "0008_telemetry_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
