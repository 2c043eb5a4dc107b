"""Alembic migrations: the only way flagrail's schema is made. Nothing imports this package's
modules except Alembic itself; ``flags.store.schema`` locates it on disk."""
