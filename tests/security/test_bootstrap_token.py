"""Issue #14, finding 11: the first admin token.

It is created in one transaction with the "no tokens yet" check, so servers started
together on one empty database mint one token between them; it is written to a file of
mode 0600 (``FLAGRAIL_BOOTSTRAP_TOKEN_FILE``) whose path is printed, and the token itself
appears in no output."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, func, insert, select, text

from api.cli.server import (
    _BOOTSTRAP_LOCK,
    BOOTSTRAP_TOKEN_NAME,
    bootstrap_token,
    default_token_file,
)
from flags.store.sql import SqlFlagStore, cli_actor
from flags.store.tables import tokens
from flags.testing import wait_for
from flags.testing.redis_server import free_port

FLAGRAIL = str(Path(sys.executable).with_name("flagrail"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGRAIL_")}
    env.update(FLAGRAIL_SCHEDULER="false", **extra)
    return env


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _token_count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(tokens)).scalar_one())
    finally:
        engine.dispose()


def _waiting_on_lock(engine: Engine) -> int:
    """How many sessions wait for an advisory lock on this test's own database."""
    query = text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


class Servers:
    """``flagrail serve`` processes started together on one database."""

    def __init__(self, url: str, token_files: list[Path]) -> None:
        self.ports = [free_port() for _ in token_files]
        self.procs = [
            subprocess.Popen(
                [FLAGRAIL, "serve", "--database-url", url, "--port", str(port)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
                env=_env(FLAGRAIL_BOOTSTRAP_TOKEN_FILE=str(token_file)),
            )
            for port, token_file in zip(self.ports, token_files, strict=True)
        ]

    @property
    def bases(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def stop(self) -> list[str]:
        """Stop every server; their stdout and stderr, one string per server."""
        outputs = []
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            out, err = proc.communicate(timeout=30)
            outputs.append(out + err)
        return outputs


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    """An empty directory for token files (the test's SQLite database is in tmp_path)."""
    path = tmp_path / "tokens"
    path.mkdir()
    return path


@pytest.fixture
def servers_factory() -> Iterator[list[Servers]]:
    started: list[Servers] = []
    yield started
    for servers in started:
        for proc in servers.procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)


@pytest.mark.slow
@pytest.mark.postgres
def test_serve__three_servers_together_on_an_empty_postgres__one_token_between_them(
    postgres_url: str, tmp_path: Path, servers_factory: list[Servers]
) -> None:
    """Real processes racing on one database: one token, one file, printed path only.

    The test holds the bootstrap lock until all three servers wait on it, so all three
    have found "no tokens yet" before any of them may insert: the race happens every run.
    """
    token_files = [tmp_path / f"server-{i}.token" for i in range(3)]
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as holder:
            holder.execute(select(func.pg_advisory_xact_lock(_BOOTSTRAP_LOCK)))
            servers = Servers(postgres_url, token_files)
            servers_factory.append(servers)
            wait_for(lambda: _waiting_on_lock(engine) == 3, 60, "three servers at the lock")
            holder.commit()
    finally:
        engine.dispose()
    for base in servers.bases:
        wait_for(lambda base=base: _healthy(base), 60, f"flagrail serve at {base}")

    written = [f for f in token_files if f.exists()]
    assert len(written) == 1
    assert _token_count(postgres_url) == 1
    assert stat.S_IMODE(written[0].stat().st_mode) == 0o600
    token = written[0].read_text().strip()
    for base in servers.bases:
        response = httpx.get(f"{base}/admin/flags", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    # No leftovers: the token file and one first console login (written by whichever
    # server created the console user), both 0600.
    logins = [p for p in tmp_path.iterdir() if p.name.endswith("console-login")]
    assert len(logins) == 1
    assert stat.S_IMODE(logins[0].stat().st_mode) == 0o600
    password = logins[0].read_text().split("password", 1)[1].strip(" :=\n")
    assert len(password) >= 12
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([written[0].name, logins[0].name])

    outputs = servers.stop()
    assert all(token not in output and password not in output for output in outputs)
    announced = [output for output in outputs if "first admin token" in output]
    assert len(announced) == 1
    assert str(written[0]) in announced[0]


def test_serve__fresh_sqlite__token_in_a_0600_file_beside_the_database(
    tmp_path: Path, servers_factory: list[Servers]
) -> None:
    """Without FLAGRAIL_BOOTSTRAP_TOKEN_FILE the token goes beside the SQLite file."""
    database = tmp_path / "flagrail.db"
    expected = default_token_file(f"sqlite:///{database}")
    assert expected == database.with_name("flagrail.db.admin-token").resolve()
    port = free_port()
    proc = subprocess.Popen(
        [FLAGRAIL, "serve", "--database-url", f"sqlite:///{database}", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    servers = Servers.__new__(Servers)
    servers.ports, servers.procs = [port], [proc]
    servers_factory.append(servers)
    assert proc.stdout is not None
    assert "first admin token written to" in proc.stdout.readline()
    assert Path(proc.stdout.readline().strip()) == expected
    wait_for(lambda: _healthy(servers.bases[0]), 60, "flagrail serve")
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    token = expected.read_text().strip()
    (output,) = servers.stop()
    assert token not in output


class TestBootstrapToken:
    def test_bootstrap__database_with_a_token__no_token_and_no_file(
        self, database_url: str, token_dir: Path
    ) -> None:
        """A database that has any token (even a reader) gets no bootstrap token."""
        store = SqlFlagStore(database_url)
        try:
            store.create_token("reader", "reader", None, actor=cli_actor())
        finally:
            store.close()
        assert bootstrap_token(database_url, token_dir / "token") is None
        assert list(token_dir.iterdir()) == []
        assert _token_count(database_url) == 1

    def test_bootstrap__twice__second_is_none_and_file_kept(
        self, database_url: str, token_dir: Path
    ) -> None:
        """A restart on the same database neither mints nor rewrites."""
        path = token_dir / "token"
        assert bootstrap_token(database_url, path) == path
        first = path.read_text()
        assert bootstrap_token(database_url, path) is None
        assert path.read_text() == first
        assert _token_count(database_url) == 1
        store = SqlFlagStore(database_url)
        try:
            (info,) = store.list_tokens()
        finally:
            store.close()
        assert (info.name, info.role.value, info.environments) == (
            BOOTSTRAP_TOKEN_NAME,
            "admin",
            None,
        )

    def test_bootstrap__existing_file__replaced_with_mode_0600(
        self, sqlite_url: str, token_dir: Path
    ) -> None:
        """A world-readable file at the path is replaced, not written into."""
        path = token_dir / "token"
        path.write_text("old\n")
        path.chmod(0o644)
        assert bootstrap_token(sqlite_url, path) == path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().startswith("frl_")

    def test_bootstrap__directory_missing__one_line_error_and_no_token(
        self, sqlite_url: str, token_dir: Path
    ) -> None:
        """A path that cannot be written fails before any token is minted."""
        from api.cli.output import CliError

        with pytest.raises(CliError, match="FLAGRAIL_BOOTSTRAP_TOKEN_FILE"):
            bootstrap_token(sqlite_url, token_dir / "missing" / "token")
        assert _token_count(sqlite_url) == 0

    @pytest.mark.postgres
    def test_bootstrap__another_bootstrap_holds_the_lock__waits_then_mints_nothing(
        self, postgres_url: str, token_dir: Path
    ) -> None:
        """While another transaction holds the bootstrap lock and inserts a token, a
        bootstrap waits for it, then sees that token and mints none."""
        engine = create_engine(postgres_url)
        results: list[Path | None] = []
        try:
            with engine.connect() as holder:
                holder.execute(select(func.pg_advisory_xact_lock(_BOOTSTRAP_LOCK)))
                worker = threading.Thread(
                    target=lambda: results.append(bootstrap_token(postgres_url, token_dir / "t"))
                )
                worker.start()

                wait_for(lambda: _waiting_on_lock(engine) == 1, 30, "the bootstrap at the lock")
                # What the other server's bootstrap inserts, committed with its lock.
                holder.execute(
                    insert(tokens).values(
                        id="other-server",
                        name="other-server",
                        role="admin",
                        environments=None,
                        token_hash="0" * 64,
                        created_at=datetime.now(UTC),
                        created_by="test",
                    )
                )
                holder.commit()
                worker.join(30)
        finally:
            engine.dispose()
        assert results == [None]
        assert list(token_dir.iterdir()) == []  # neither the file nor its temporary
        assert _token_count(postgres_url) == 1
