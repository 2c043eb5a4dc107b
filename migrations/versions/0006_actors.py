"""Actors: each history row names the API token behind it; tokens may be limited to
flag key patterns.

``history`` gains ``token_id`` and ``token_name`` (the token that made the change;
null for plans, the server and the break-glass CLI) and ``claimed_actor`` (what a
``guard`` token claimed in ``X-Flagrail-Actor``, kept apart from the token).
``tokens`` gains ``flags``: null for every flag, else a JSON list of fnmatch patterns.
Adding nullable columns leaves the history triggers as they are: old rows keep nulls.

Revision ID: 0006_actors
Revises: 0005_history_truncate
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_actors"
down_revision = "0005_history_truncate"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD/DROP COLUMN (SQLite 3.35+ has both): a batch table copy would drop the
    # history triggers on SQLite.
    op.add_column("history", sa.Column("token_id", sa.String(32), nullable=True))
    op.add_column("history", sa.Column("token_name", sa.String(200), nullable=True))
    op.add_column("history", sa.Column("claimed_actor", sa.String(200), nullable=True))
    op.add_column("tokens", sa.Column("flags", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("tokens", "flags")
    op.drop_column("history", "claimed_actor")
    op.drop_column("history", "token_name")
    op.drop_column("history", "token_id")
