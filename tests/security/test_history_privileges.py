"""History is append-only on PostgreSQL by trigger (UPDATE, DELETE, TRUNCATE) and, for a
server run as a role that does not own the tables (``flagrail db grant``), by privilege:
that role cannot rewrite, delete or TRUNCATE history even after the owner dropped the
triggers, while the server's own work (a flag created, its history row appended) goes on.

Each test works in a PostgreSQL database and a login role of its own, both dropped after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import psycopg
import pytest
from sqlalchemy import create_engine, text

from api.cli import main
from flags.errors import ValidationError
from flags.store.schema import grant_app_role, upgrade
from flags.store.sql import SqlFlagStore

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class Database:
    owner_url: str
    app_url: str
    role: str


@pytest.fixture
def database(root_conftest: ModuleType) -> Iterator[Database]:
    conftest = root_conftest
    if not conftest._port_open(conftest.PG_HOST, conftest.PG_PORT):
        conftest._unavailable(f"PostgreSQL on {conftest.PG_HOST}:{conftest.PG_PORT}")
    suffix = uuid.uuid4().hex[:12]
    name, role = f"flagrail_priv_{suffix}", f"flagrail_app_{suffix}"
    conftest._pg_admin(f'CREATE DATABASE "{name}"')
    conftest._pg_admin(f'CREATE ROLE "{role}" LOGIN')
    owner_url = conftest.pg_url(name)
    app_url = owner_url.replace(f"//{conftest.PG_USER}@", f"//{role}@", 1)
    assert app_url != owner_url
    try:
        upgrade(owner_url)
        yield Database(owner_url, app_url, role)
    finally:
        conftest._pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conftest._pg_admin(f'DROP ROLE IF EXISTS "{role}"')


def _execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def _history_count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM history")).scalar_one())
    finally:
        engine.dispose()


def _create_flag(url: str, key: str) -> None:
    store = SqlFlagStore(url)
    try:
        store.create_flag(key, owner="team", actor="app")
    finally:
        store.close()


@pytest.mark.parametrize(
    "statement", ["UPDATE history SET reason = 'x'", "DELETE FROM history", "TRUNCATE history"]
)
def test_history__owner_rewrites__refused_by_trigger(database: Database, statement: str) -> None:
    _create_flag(database.owner_url, "checkout.v2")
    before = _history_count(database.owner_url)
    assert before > 0
    with pytest.raises(Exception, match="append-only"):
        _execute(database.owner_url, statement)
    assert _history_count(database.owner_url) == before


def test_app_role__granted__appends_history_but_cannot_rewrite_it_without_triggers(
    database: Database,
) -> None:
    grant_app_role(database.owner_url, database.role)
    # The server's own work, as the application role: a flag and its history row.
    _create_flag(database.app_url, "checkout.v2")
    before = _history_count(database.app_url)
    assert before > 0
    # The owner drops every trigger; privilege alone still holds for the app role.
    for trigger in ("history_append_only", "history_no_truncate"):
        _execute(database.owner_url, f"DROP TRIGGER {trigger} ON history")
    for statement in (
        "UPDATE history SET reason = 'x'",
        "DELETE FROM history",
        "TRUNCATE history",
        "DROP TABLE history",
        "ALTER TABLE history DISABLE TRIGGER ALL",
    ):
        with pytest.raises(Exception) as caught:
            _execute(database.app_url, statement)
        assert isinstance(
            caught.value.__cause__ or caught.value.orig,  # type: ignore[attr-defined]
            psycopg.errors.InsufficientPrivilege,
        ), statement
    assert _history_count(database.owner_url) == before


def test_app_role__not_granted__cannot_read_or_write(database: Database) -> None:
    with pytest.raises(Exception, match="permission denied"):
        _history_count(database.app_url)


def test_db_grant__cli__prints_statements_and_grants(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["db", "grant", database.role, "--database-url", database.owner_url])
    assert exited.value.code in (0, None)
    out = capsys.readouterr().out
    assert f'GRANT SELECT, INSERT ON TABLE "history" TO "{database.role}"' in out
    _create_flag(database.app_url, "billing.v3")
    assert _history_count(database.app_url) > 0


@pytest.mark.parametrize("role", ["", "1abc", "app; DROP TABLE history", "a" * 64, 'x"y'])
def test_grant_app_role__malformed_role__names_the_field(database: Database, role: str) -> None:
    with pytest.raises(ValidationError) as caught:
        grant_app_role(database.owner_url, role)
    assert caught.value.field == "role"


def test_grant_app_role__sqlite__refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    with pytest.raises(ValidationError, match="PostgreSQL"):
        grant_app_role(url, "flagrail_app")
