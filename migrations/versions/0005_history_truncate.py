"""History refuses TRUNCATE too (PostgreSQL).

``0001_core`` refuses UPDATE and DELETE of history rows with a row trigger; a
``TRUNCATE`` skips row triggers, so it emptied the table. This revision adds a
statement trigger on ``TRUNCATE`` calling the same function. SQLite has no
TRUNCATE (its ``DELETE`` without ``WHERE`` still fires the row triggers).

Triggers guard against mistakes, not against the table's owner, who may drop
them: run the server as a role that does not own the tables (``flagrail db
grant``), so history is append-only by privilege as well.

Revision ID: 0005_history_truncate
Revises: 0004_merge
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0005_history_truncate"
down_revision = "0004_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER history_no_truncate BEFORE TRUNCATE ON history "
            "FOR EACH STATEMENT EXECUTE FUNCTION flagrail_history_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS history_no_truncate ON history")
