"""Typed flags: value type and variants persisted (#19).

A flag gains its type (``boolean`` for every existing row), its variants and the
off/on variants a new environment starts with; a flag state gains its off/on
variant, split and pinned tenants. Existing rows read back as boolean flags.

Revision ID: 0009_typed_flags
Revises: 0008_telemetry_tokens
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_typed_flags"
down_revision = "0008_telemetry_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD/DROP COLUMN (SQLite 3.35+ has both): a batch table copy of flags would
    # have to rebuild the foreign keys pointing at it.
    op.add_column(
        "flags", sa.Column("type", sa.String(20), nullable=False, server_default="boolean")
    )
    op.add_column("flags", sa.Column("variants", sa.JSON(), nullable=True))
    op.add_column("flags", sa.Column("off_variant", sa.String(64), nullable=True))
    op.add_column("flags", sa.Column("on_variant", sa.String(64), nullable=True))
    op.add_column("flag_states", sa.Column("off_variant", sa.String(64), nullable=True))
    op.add_column("flag_states", sa.Column("on_variant", sa.String(64), nullable=True))
    op.add_column("flag_states", sa.Column("split", sa.JSON(), nullable=True))
    op.add_column("flag_states", sa.Column("tenant_variants", sa.JSON(), nullable=True))


def downgrade() -> None:
    for name in ("tenant_variants", "split", "on_variant", "off_variant"):
        op.drop_column("flag_states", name)
    for name in ("on_variant", "off_variant", "variants", "type"):
        op.drop_column("flags", name)
