"""Telemetry rows carry the token that wrote them (#14).

``sdk_instances`` gains ``token_id``: the token that first reported the instance owns
it, on every replica (the database, not a replica's memory, is the truth). Rows from
before this revision get NULL: an unowned instance, claimed by the first token that
reports it after the upgrade.

``sdk_counters`` gains ``token_id`` as the last column of its primary key (counts are
summed per second *per token*, and rolled up per hour per token), so a plan guard's
rollback can name the tokens behind a breach whichever replica heard them. A primary
key column cannot be NULL: rows from before this revision get ``""`` (unattributed).

SQLite cannot change a primary key in place, so there the counter table is copied
(it has no triggers); PostgreSQL alters it.

Revision ID: 0008_telemetry_tokens
Revises: 0007_console
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_telemetry_tokens"
down_revision = "0007_console"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
OLD_KEY = ["flag_key", "environment", "name", "bucket_at"]
NEW_KEY = [*OLD_KEY, "token_id"]


def _copy_counters(key: list[str], *, with_token: bool) -> None:
    """SQLite: rebuild ``sdk_counters`` with primary key ``key`` (copying every row)."""
    columns = [
        sa.Column("flag_key", sa.String(100), nullable=False),
        sa.Column("environment", sa.String(40), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("bucket_at", TZ, nullable=False),
    ]
    if with_token:
        columns.append(sa.Column("token_id", sa.String(200), nullable=False))
    columns.append(sa.Column("value", sa.Float, nullable=False))
    op.create_table("sdk_counters_0008", *columns, sa.PrimaryKeyConstraint(*key))
    if with_token:
        op.execute(
            "INSERT INTO sdk_counters_0008"
            " (flag_key, environment, name, bucket_at, token_id, value)"
            " SELECT flag_key, environment, name, bucket_at, '', value FROM sdk_counters"
        )
    else:  # several tokens' counts of one second become one row again
        op.execute(
            "INSERT INTO sdk_counters_0008 (flag_key, environment, name, bucket_at, value)"
            " SELECT flag_key, environment, name, bucket_at, SUM(value) FROM sdk_counters"
            " GROUP BY flag_key, environment, name, bucket_at"
        )
    op.drop_index("ix_sdk_counters_bucket_at", table_name="sdk_counters")
    op.drop_table("sdk_counters")
    op.rename_table("sdk_counters_0008", "sdk_counters")
    op.create_index("ix_sdk_counters_bucket_at", "sdk_counters", ["bucket_at"])


def _primary_key_name() -> str:
    """The counter table's primary key constraint, as the database names it."""
    name = sa.inspect(op.get_bind()).get_pk_constraint("sdk_counters").get("name")
    return str(name or "pk_sdk_counters")


def upgrade() -> None:
    op.add_column("sdk_instances", sa.Column("token_id", sa.String(200), nullable=True))
    op.create_index("ix_sdk_instances_token_seen", "sdk_instances", ["token_id", "last_seen_at"])
    if op.get_bind().dialect.name == "sqlite":
        _copy_counters(NEW_KEY, with_token=True)
        return
    op.add_column(
        "sdk_counters",
        sa.Column("token_id", sa.String(200), nullable=False, server_default=""),
    )
    op.alter_column("sdk_counters", "token_id", server_default=None)
    name = _primary_key_name()
    op.drop_constraint(name, "sdk_counters", type_="primary")
    op.create_primary_key(name, "sdk_counters", NEW_KEY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _copy_counters(OLD_KEY, with_token=False)
    else:
        op.execute(
            "CREATE TEMPORARY TABLE sdk_counters_0008 AS SELECT flag_key, environment, name,"
            " bucket_at, SUM(value) AS value FROM sdk_counters"
            " GROUP BY flag_key, environment, name, bucket_at"
        )
        op.execute("DELETE FROM sdk_counters")
        name = _primary_key_name()
        op.drop_constraint(name, "sdk_counters", type_="primary")
        op.drop_column("sdk_counters", "token_id")
        op.create_primary_key(name, "sdk_counters", OLD_KEY)
        op.execute(
            "INSERT INTO sdk_counters (flag_key, environment, name, bucket_at, value)"
            " SELECT flag_key, environment, name, bucket_at, value FROM sdk_counters_0008"
        )
        op.execute("DROP TABLE sdk_counters_0008")
    op.drop_index("ix_sdk_instances_token_seen", table_name="sdk_instances")
    op.drop_column("sdk_instances", "token_id")
