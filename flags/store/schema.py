"""Schema management: run the Alembic migrations and tell whether a database is current."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError

from flags.errors import SchemaOutdatedError, StoreUnavailableError

__all__ = ["alembic_config", "check_schema", "database_revisions", "head_revisions", "upgrade"]

MIGRATIONS = Path(__file__).resolve().parent.parent.parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def database_revisions(engine: Engine) -> set[str]:
    """Revisions the database is at (empty for a database never migrated)."""
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    except SQLAlchemyError as exc:
        raise StoreUnavailableError(f"cannot read the schema version: {exc}") from exc


def upgrade(url: str) -> None:
    """Bring the database at ``url`` to the newest schema. Idempotent.

    Raises ``StoreUnavailableError`` when the database cannot be reached.
    """
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, "heads")
    except SQLAlchemyError as exc:
        raise StoreUnavailableError(f"migration failed: {exc}") from exc
    finally:
        engine.dispose()


def check_schema(engine: Engine) -> None:
    """Raise ``SchemaOutdatedError`` unless the database is at the newest revisions."""
    current = database_revisions(engine)
    heads = head_revisions()
    if current != heads:
        raise SchemaOutdatedError(
            f"database schema is at {sorted(current) or 'nothing'}, this flagrail needs "
            f"{sorted(heads)}: run `flagrail db upgrade`"
        )
