"""Indexes for the console's flags grid (#15): ``ix_flags_archived_key`` and
``ix_flag_states_killed_key``.

``flags (archived, key)`` lets the grid count the live flags and walk them in key
order from the index alone. ``flag_states (killed, flag_key, enabled, rollout,
environment)`` serves both forms of the state filter: the ``killed`` word reads the
short ``killed = true`` range (a semi-join), and every other word (all ``killed =
false``) probes one flag's states by a seek on ``(false, flag_key)`` that rarely
needs the row itself (only ``on``/``partial`` at a rollout of 100 read
``tenants_off``).

Revision ID: 0013_flags_grid_indexes
Revises: 0012_user_tokens
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013_flags_grid_indexes"
down_revision = "0012_user_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_flags_archived_key", "flags", ["archived", "key"])
    op.create_index(
        "ix_flag_states_killed_key",
        "flag_states",
        ["killed", "flag_key", "enabled", "rollout", "environment"],
    )


def downgrade() -> None:
    op.drop_index("ix_flag_states_killed_key", table_name="flag_states")
    op.drop_index("ix_flags_archived_key", table_name="flags")
