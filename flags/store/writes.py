"""Write transactions that behave alike on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write. On SQLite (an engine from
    ``flags.store.sql.make_engine``) it takes the write lock at ``BEGIN`` (``BEGIN
    IMMEDIATE``): a deferred transaction that reads, then writes after another writer
    committed, fails at once with "database is locked" instead of waiting for the
    busy timeout. Elsewhere a plain transaction."""
    with engine.connect() as conn:
        conn = conn.execution_options(flagrail_write=True)
        with conn.begin():
            yield conn
