"""The migration history has one head that every database reaches, the models and the
migrated schema agree (``flagrail db check`` and ``alembic check`` find no drift) on SQLite
and PostgreSQL, and the check does fail on a drift made by hand."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from api.cli import main
from flags.errors import SchemaOutdatedError
from flags.store.schema import (
    alembic_config,
    database_revisions,
    head_revision,
    head_revisions,
    metadata,
    migrations_directory,
    schema_drift,
    upgrade,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # main() always exits
        raise AssertionError("main() returned without exiting")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, on SQLite and on a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    conftest = request.getfixturevalue("root_conftest")
    if not conftest._port_open(conftest.PG_HOST, conftest.PG_PORT):
        conftest._unavailable(f"PostgreSQL on {conftest.PG_HOST}:{conftest.PG_PORT}")
    name = f"flagrail_m_{uuid.uuid4().hex[:12]}"
    conftest._pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield conftest.pg_url(name)
    finally:
        conftest._pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


class TestHistory:
    def test_heads__migrations__exactly_one(self) -> None:
        """Every revision is joined into one head."""
        assert len(head_revisions()) == 1
        assert head_revision() in head_revisions()

    def test_walk__from_the_head__reaches_every_revision(self) -> None:
        """No revision is left on a branch of its own: all are ancestors of the head."""
        script = ScriptDirectory.from_config(alembic_config())
        from_head = {rev.revision for rev in script.walk_revisions(base="base", head="head")}
        files = {path.stem for path in (migrations_directory() / "versions").glob("[0-9]*.py")}
        assert from_head == files

    def test_metadata__every_table_model__in_the_one_metadata(self, sqlite_url: str) -> None:
        """The metadata env.py reads holds every table the migrations make, and no other."""
        assert set(metadata.tables) == _table_names(sqlite_url)
        assert {"sdk_instances", "sdk_flag_evaluations", "sdk_counters", "plans"} <= set(
            metadata.tables
        )


class TestUpgrade:
    def test_upgrade__empty_database__at_the_head(self, empty_database_url: str) -> None:
        """An empty database is migrated to the one head; a second upgrade changes nothing."""
        upgrade(empty_database_url)
        upgrade(empty_database_url)
        engine = create_engine(empty_database_url)
        try:
            assert database_revisions(engine) == {head_revision()}
        finally:
            engine.dispose()
        assert schema_drift(empty_database_url) == []

    def test_upgrade__database_at_both_old_heads__merged_to_the_head(
        self, empty_database_url: str
    ) -> None:
        """A database upgraded to the two old branch heads (``heads``) moves to the merge."""
        engine = create_engine(empty_database_url)
        try:
            with engine.begin() as conn:
                config = alembic_config(empty_database_url)
                config.attributes["connection"] = conn
                command.upgrade(config, "0002_sdk")
                command.upgrade(config, "0003_plans")
            assert database_revisions(engine) == {"0002_sdk", "0003_plans"}
            upgrade(empty_database_url)
            assert database_revisions(engine) == {head_revision()}
        finally:
            engine.dispose()

    def test_downgrade__to_base_and_up_again__no_drift(self, empty_database_url: str) -> None:
        """Every revision can be undone (through the merge), and redone to a clean schema."""
        upgrade(empty_database_url)
        engine = create_engine(empty_database_url)
        try:
            with engine.begin() as conn:
                config = alembic_config(empty_database_url)
                config.attributes["connection"] = conn
                command.downgrade(config, "base")
            assert database_revisions(engine) == set()
        finally:
            engine.dispose()
        assert _table_names(empty_database_url) == set()
        upgrade(empty_database_url)
        assert schema_drift(empty_database_url) == []

    def test_schema_drift__database_behind__names_db_upgrade(self, empty_database_url: str) -> None:
        """Drift is only judged at the head: an old schema is told to upgrade first."""
        engine = create_engine(empty_database_url)
        try:
            with engine.begin() as conn:
                config = alembic_config(empty_database_url)
                config.attributes["connection"] = conn
                command.upgrade(config, "0001_core")
        finally:
            engine.dispose()
        with pytest.raises(SchemaOutdatedError, match="flagrail db upgrade"):
            schema_drift(empty_database_url)


class TestDbCheck:
    def test_db_check__migrated_database__no_drift(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """On a migrated database the models match: exit 0, nothing listed."""
        code, out, err = _cli(capsys, "db", "check", "--database-url", database_url)
        assert (code, out) == (0, "")
        assert "no drift" in err

    def test_db_check__column_and_index_changed_by_hand__lists_them_and_exits_1(
        self, database_url: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A column added and an index dropped by hand are each listed; one-line error, exit 1."""
        _execute(
            database_url,
            "ALTER TABLE flags ADD COLUMN added_by_hand INTEGER",
            "DROP INDEX ix_history_at",
        )
        code, out, err = _cli(capsys, "db", "check", "--database-url", database_url)
        assert code == 1
        assert sorted(out.splitlines()) == [
            "column flags.added_by_hand: in the database, missing from the models",
            "index ix_history_at on history (at): in the models, missing from the database",
        ]
        assert err.startswith("flagrail: error: schema drift on ")
        assert "2 difference(s)" in err
        assert len(err.strip().splitlines()) == 1

    def test_db_check__column_type_changed_by_hand__listed(self, postgres_url: str) -> None:
        """A column whose type differs from its model is listed with both types."""
        _execute(postgres_url, "ALTER TABLE tokens ALTER COLUMN name TYPE VARCHAR(50)")
        assert schema_drift(postgres_url) == [
            "column tokens.name type: database has VARCHAR(50), models say VARCHAR(200)"
        ]

    def test_db_check__server_default_changed_by_hand__listed(self, postgres_url: str) -> None:
        """Server defaults are compared too: one set by hand is listed with both values."""
        _execute(
            postgres_url,
            "ALTER TABLE flags ALTER COLUMN archived SET DEFAULT true",
            "ALTER TABLE plans ALTER COLUMN version DROP DEFAULT",
        )
        assert sorted(schema_drift(postgres_url)) == [
            "column flags.archived default: database has true, models say false",
            "column plans.version default: database has none, models say 0",
        ]

    def test_db_check__unreachable_database__one_line_error(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A database that does not answer is a one-line error, not a traceback."""
        url = "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2"
        code, out, err = _cli(capsys, "db", "check", "--database-url", url)
        assert code == 1
        assert out == ""
        assert err.startswith("flagrail: error: ")
        assert len(err.strip().splitlines()) == 1


def test_alembic_check__from_the_repository__no_drift(tmp_path: Path) -> None:
    """``alembic upgrade head`` then ``alembic check`` work from the repository root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGRAIL_")}
    env["FLAGRAIL_DATABASE_URL"] = f"sqlite:///{tmp_path / 'alembic.db'}"
    alembic = [sys.executable, "-m", "alembic"]
    for args in (["upgrade", "head"], ["check"]):
        result = subprocess.run(
            [*alembic, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    assert "No new upgrade operations detected" in result.stdout + result.stderr
