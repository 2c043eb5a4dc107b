"""Merge the SDK-telemetry and rollout-plan branches into one head.

``0002_sdk`` and ``0003_plans`` were both written on top of ``0001_core``; this
revision joins them, so the history has a single head and ``alembic upgrade
head`` (what ``flagrail db upgrade`` runs) is well defined. It changes nothing
in the schema. New revisions revise this one.

Revision ID: 0004_merge
Revises: 0002_sdk, 0003_plans
Create Date: 2026-12-02
"""

from __future__ import annotations

revision = "0004_merge"
down_revision = ("0002_sdk", "0003_plans")
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to change: joining the two branches is the whole revision."""


def downgrade() -> None:
    """Nothing to undo: downgrading splits the history back into its two branches."""
