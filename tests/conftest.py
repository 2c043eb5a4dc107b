"""Shared fixtures: real databases and real Redis servers.

* ``database_url`` is parametrized over SQLite and PostgreSQL. Each PostgreSQL
  test gets a database of its own, cloned from a migrated template made once
  per session, and dropped afterwards; the machine's ``test`` database is only
  used to connect.
* ``redis_url`` is the machine's Redis on 127.0.0.1:6379 when it answers, else a
  throwaway ``redis-server``. Tests must namespace their keys (``key_prefix``)
  and never flush it.
* ``redis_server`` is a throwaway server of the test's own, for fault drills.

Under ``CI=true`` a PostgreSQL or Redis test that would be skipped fails instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from flags.testing.redis_server import RedisServer, find_redis_server

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_HOST = os.environ.get("FLAGRAIL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("FLAGRAIL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("FLAGRAIL_TEST_PG_USER", "postgres")
PG_ADMIN_DB = os.environ.get("FLAGRAIL_TEST_PG_DB", "test")


def _unavailable(what: str) -> None:
    message = f"{what} is not available"
    if IN_CI:
        pytest.fail(f"{message}, and under CI=true that is a failure, not a skip")
    pytest.skip(message)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pg_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(
        host=PG_HOST,
        port=PG_PORT,
        user=PG_USER,
        dbname=PG_ADMIN_DB,
        autocommit=True,
        connect_timeout=5,
    ) as conn:
        conn.execute(sql)


class PostgresDatabases:
    """Creates migrated PostgreSQL databases of our own from one template."""

    def __init__(self) -> None:
        self.template = f"flagrail_tpl_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []
        self.ready = False

    def ensure_template(self) -> None:
        if self.ready:
            return
        from flags.store.schema import upgrade

        _pg_admin(f'CREATE DATABASE "{self.template}"')
        upgrade(pg_url(self.template))
        self.ready = True

    def create(self) -> str:
        self.ensure_template()
        name = f"flagrail_t_{uuid.uuid4().hex[:12]}"
        _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        self.created.append(name)
        return name

    def drop(self, name: str) -> None:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self.ready:
            self.drop(self.template)


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases | None]:
    if not _port_open(PG_HOST, PG_PORT):
        yield None
        return
    dbs = PostgresDatabases()
    try:
        yield dbs
    finally:
        dbs.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from flags.store.schema import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite database file of this test's own."""
    path = tmp_path / "flagrail.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_url(postgres_databases: PostgresDatabases | None) -> Iterator[str]:
    """A migrated PostgreSQL database of this test's own, dropped afterwards."""
    if postgres_databases is None:
        _unavailable(f"PostgreSQL on {PG_HOST}:{PG_PORT}")
    assert postgres_databases is not None
    name = postgres_databases.create()
    try:
        yield pg_url(name)
    finally:
        postgres_databases.drop(name)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of this test's own, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def _session_redis() -> Iterator[str | None]:
    if _port_open("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    if find_redis_server() is None:
        yield None
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def redis_url(_session_redis: str | None) -> str:
    """A live Redis: the machine's, else a throwaway one. Namespace keys; never flush."""
    if _session_redis is None:
        _unavailable("Redis (no server on 127.0.0.1:6379 and no redis-server binary)")
    assert _session_redis is not None
    return _session_redis


@pytest.fixture
def key_prefix() -> str:
    """A unique key or channel prefix for this test."""
    return f"flagrail-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server of this test's own, which it may stop, pause or slow."""
    if find_redis_server() is None:
        _unavailable("redis-server binary")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def root_conftest() -> ModuleType:
    """This module, for tests that need its PostgreSQL helpers (``pg_url``, ``_pg_admin``):
    ``import conftest`` finds whichever directory's conftest was loaded last."""
    return _THIS_MODULE


# Taken while this module is the one being imported: later, ``sys.modules["conftest"]`` may be
# another directory's conftest.
_THIS_MODULE = sys.modules[__name__]
