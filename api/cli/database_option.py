"""The ``--database-url`` option the database-facing commands share, and its default."""

from __future__ import annotations

import typer

from flags.settings import Settings

__all__ = ["DatabaseUrl", "database_url"]

DatabaseUrl = typer.Option(
    None,
    "--database-url",
    envvar="FLAGRAIL_DATABASE_URL",
    help="SQLAlchemy URL (default sqlite:///./flagrail.db).",
)


def database_url(value: str | None) -> str:
    """``value``, else the configured database (``FLAGRAIL_DATABASE_URL``, else SQLite)."""
    return value or Settings().database_url
