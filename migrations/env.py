"""Alembic environment: runs the migrations on the connection or URL that flagrail passes in.

``flags.store.schema`` passes an open connection (``config.attributes["connection"]``).
Run as ``alembic`` from the repository (``alembic.ini``), the URL is the ini's
``sqlalchemy.url`` if set, else ``FLAGRAIL_DATABASE_URL``, else flagrail's default
(``sqlite:///./flagrail.db``). ``target_metadata`` is every table model (see
``flags.store.schema.metadata``), so ``alembic check`` and autogenerate see them all.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine

from flags.store.schema import COMPARE_OPTIONS, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name)  # the `alembic` command: log the steps it runs


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from flags.settings import Settings

    return Settings().database_url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, **COMPARE_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True, **COMPARE_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
