"""The ``flagrail`` CLI: flag commands against a real server (uvicorn in a thread) and
directly on the database (break-glass); tables for people, JSON for scripts, one-line
errors; the bootstrap commands as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

from api.app import create_app
from api.cli import main
from flags.history import HistoryQuery
from flags.settings import Settings
from flags.store.sql import SqlFlagStore, cli_actor
from flags.testing import wait_for
from flags.testing.redis_server import free_port

FLAGRAIL = str(Path(sys.executable).with_name("flagrail"))


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``flagrail`` in process, as ``main()`` runs it (exit code, stdout, stderr)."""

    def __init__(self, capsys: pytest.CaptureFixture[str], base: list[str]) -> None:
        self.capsys = capsys
        self.base = base

    def __call__(self, *args: str, base: bool = True) -> Result:
        self.capsys.readouterr()
        argv = [*args, *self.base] if base else list(args)
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:  # main() always exits
            raise AssertionError("main() returned without exiting")
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Server:
    url: str
    database_url: str
    token: str
    store: SqlFlagStore


@pytest.fixture
def server(database_url: str) -> Iterator[Server]:
    """A real uvicorn server in a thread on the test's database, and an admin token."""
    store = SqlFlagStore(database_url)
    _info, token = store.create_token("alice", "admin", None, actor="test")
    port = free_port()
    app = create_app(Settings(database_url=database_url, scheduler=False))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url), 20, "the server's /healthz")
        yield Server(url, database_url, token, store)
    finally:
        uv.should_exit = True
        thread.join(timeout=20)
        store.close()
        assert not thread.is_alive(), "the server did not stop"


@pytest.fixture
def cli(server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The CLI pointed at the server through FLAGRAIL_URL and FLAGRAIL_TOKEN."""
    monkeypatch.setenv("FLAGRAIL_URL", server.url)
    monkeypatch.setenv("FLAGRAIL_TOKEN", server.token)
    return Cli(capsys, [])


@pytest.fixture
def direct(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    """The CLI working directly on the database (no server, no token)."""
    monkeypatch.delenv("FLAGRAIL_URL", raising=False)
    monkeypatch.delenv("FLAGRAIL_TOKEN", raising=False)
    return Cli(capsys, ["--database-url", database_url])


def assert_one_line_error(result: Result, *needles: str, code: int = 1) -> None:
    """A failure: exit ``code``, nothing on stdout, one line on stderr, no traceback."""
    assert result.code == code, result
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("flagrail: error: ")
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


class TestRemote:
    def test_flags_create_list_show__human_and_json(self, cli: Cli, server: Server) -> None:
        """create/list/show print tables, and with --json exactly the API's JSON."""
        created = cli("flags", "create", "auth.cache.l2", "-d", "L2 cache", "--tag", "auth")
        assert created.code == 0
        assert created.out.splitlines()[0].startswith("auth.cache.l2  (release; tags auth)")
        assert "production" in created.out and "ENVIRONMENT" in created.out
        listed = cli("flags", "list")
        assert listed.code == 0
        header, row = listed.out.splitlines()
        assert header.split() == [
            "KEY",
            "KIND",
            "OWNER",
            "ARCHIVED",
            "DEVELOPMENT",
            "STAGING",
            "BETA",
            "PRODUCTION",
        ]
        assert row.split() == ["auth.cache.l2", "release", "off", "off", "off", "off"]
        shown = cli("flags", "show", "auth.cache.l2", "--json")
        api_view = httpx.get(
            f"{server.url}/admin/flags/auth.cache.l2",
            headers={"Authorization": f"Bearer {server.token}"},
        ).json()
        assert shown.json() == api_view
        assert cli("flags", "list", "--json").json() == {"items": [api_view]}
        assert cli("flags", "list", "--tag", "nope", "--json").json() == {"items": []}

    def test_set__on_tenant_then_rollout__human_line_json_and_history(
        self, cli: Cli, server: Server
    ) -> None:
        """set turns a flag on for a tenant, then rolls it out; each change is in history."""
        cli("flags", "create", "a.b")
        on = cli("set", "a.b", "--env", "production", "--on", "--tenant-on", "acme")
        assert (on.code, on.out) == (
            0,
            "a.b in production: on 0% +1; tenants on: acme (version 1)\n",
        )
        half = cli(
            "set", "a.b", "--env", "production", "--rollout", "50", "--reason", "half", "--json"
        )
        assert half.code == 0
        body = half.json()
        assert (body["flag"], body["environment"], body["rollout"], body["version"]) == (
            "a.b",
            "production",
            50,
            2,
        )
        assert body["tenants_on"] == ["acme"]
        rows = server.store.list_history(HistoryQuery(flag="a.b", action="state.update")).items
        assert [(r.actor, r.reason, r.after["rollout"]) for r in rows] == [
            ("alice", "half", 50),
            ("alice", None, 0),
        ]
        cleared = cli("set", "a.b", "--env", "production", "--tenant-clear", "acme", "--json")
        assert cleared.json()["tenants_on"] == []

    def test_set__stale_if_version__one_line_409_and_nothing_changed(
        self, cli: Cli, server: Server
    ) -> None:
        """--if-version with a stale version fails with the server's message; nothing changes."""
        cli("flags", "create", "a.b")
        cli("set", "a.b", "--env", "beta", "--on")
        stale = cli("set", "a.b", "--env", "beta", "--rollout", "90", "--if-version", "0")
        assert_one_line_error(stale, "409 version_conflict", "version 1")
        assert server.store.get_state("a.b", "beta").rollout == 0
        ok = cli("set", "a.b", "--env", "beta", "--rollout", "90", "--if-version", "1")
        assert ok.code == 0 and "version 2" in ok.out

    def test_kill_unkill__tables_json_and_already_killed(self, cli: Cli, server: Server) -> None:
        """kill prints each environment's change; a second kill says unchanged; unkill lifts."""
        cli("flags", "create", "a.b")
        killed = cli("kill", "a.b", "--reason", "401 storm", "--env", "production", "--env", "beta")
        assert killed.code == 0
        lines = [line.split() for line in killed.out.splitlines()]
        assert lines == [
            ["ENVIRONMENT", "STATE", "CHANGE"],
            ["beta", "KILLED", "killed"],
            ["production", "KILLED", "killed"],
        ]
        again = cli("kill", "a.b", "--reason", "again", "--json")
        assert again.code == 0
        assert sorted(again.json()["changed"]) == ["development", "staging"]
        state = server.store.get_state("a.b", "production")
        assert (state.killed, state.kill_reason, state.killed_by) == (True, "401 storm", "alice")
        lifted = cli("unkill", "a.b", "--reason", "fixed", "--env", "production")
        assert lifted.code == 0
        assert lifted.out.splitlines()[1].split() == ["production", "off", "unkilled"]
        assert server.store.get_state("a.b", "production").killed is False

    def test_kill__wait__prints_the_confirmation_line(self, cli: Cli) -> None:
        """kill --wait asks the server to wait for SDKs and prints its confirmation line."""
        cli("flags", "create", "a.b")
        result = cli("kill", "a.b", "--reason", "r", "--wait", "1s")
        assert result.code == 0
        last = result.out.strip().splitlines()[-1]
        assert "confirm" in last.lower() or "SDK" in last
        assert not last.startswith("beta")

    def test_history__table_filters_json_and_cursor_hint(self, cli: Cli) -> None:
        """history prints newest first, filters by env/action/since, and pages with a cursor."""
        cli("flags", "create", "a.b")
        cli("set", "a.b", "--env", "beta", "--on")
        cli("kill", "a.b", "--reason", "storm", "--env", "production")
        table = cli("history", "a.b")
        assert table.code == 0
        rows = [line.split() for line in table.out.splitlines()]
        assert rows[0][:5] == ["AT", "ACTOR", "ACTION", "FLAG", "ENV"]
        assert [r[3] for r in rows[1:]] == ["kill", "state.update", "flag.create"]
        assert "killed false->true" in table.out and "enabled false->true" in table.out
        by_env = cli("history", "--env", "production", "--json").json()
        assert [(i["action"], i["environment"]) for i in by_env["items"]] == [
            ("kill", "production")
        ]
        recent = cli("history", "a.b", "--since", "1h", "--action", "state.update", "--json")
        assert [i["action"] for i in recent.json()["items"]] == ["state.update"]
        paged = cli("history", "a.b", "--limit", "1")
        assert len(paged.out.splitlines()) == 2
        assert paged.err.startswith("more: add --cursor ")
        cursor = paged.err.split()[-1]
        nxt = cli("history", "a.b", "--limit", "1", "--cursor", cursor, "--json").json()
        assert nxt["items"][0]["action"] == "state.update"

    def test_env_and_archive__human_and_json(self, cli: Cli) -> None:
        """env create/list and flags archive answer in both forms."""
        assert cli("env", "create", "qa").out == "created environment qa\n"
        names = [e["name"] for e in cli("env", "list", "--json").json()["items"]]
        assert "qa" in names
        env_rows = [line.split()[0] for line in cli("env", "list").out.splitlines()[1:]]
        assert env_rows == ["development", "staging", "beta", "production", "qa"]
        cli("flags", "create", "a.b")
        assert cli("flags", "archive", "a.b").out == "archived a.b\n"
        assert cli("flags", "show", "a.b", "--json").json()["archived"] is True
        assert cli("flags", "list", "--archived", "--json").json()["items"][0]["key"] == "a.b"

    def test_errors__one_line_each_never_a_traceback(self, cli: Cli, server: Server) -> None:
        """Server errors, bad input, bad tokens and a dead server are each one stderr line."""
        cli("flags", "create", "a.b")
        assert_one_line_error(cli("flags", "show", "no.such"), "404 flag_not_found")
        assert_one_line_error(cli("flags", "show", "Bad!"), "key must match")
        assert_one_line_error(
            cli("set", "a.b", "--env", "beta", "--rollout", "500"), "422", "rollout"
        )
        assert_one_line_error(cli("flags", "create", "a.b"), "409 already_exists")
        assert_one_line_error(cli("kill", "a.b", "--reason", " "), "422", "reason")
        assert_one_line_error(cli("history", "--limit", "900"), "limit")
        assert_one_line_error(cli("flags", "list", "--token", "frl_wrong"), "401 unauthenticated")
        dead = f"http://127.0.0.1:{free_port()}"
        assert_one_line_error(cli("flags", "list", "--url", dead), "cannot connect", dead)
        assert_one_line_error(cli("set", "a.b", "--env", "beta"), "nothing to change", code=2)

    def test_no_token__usage_error_naming_the_option(
        self, cli: Cli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a token (and without --database-url) the CLI says how to give one."""
        monkeypatch.delenv("FLAGRAIL_TOKEN")
        assert_one_line_error(cli("flags", "list"), "--token", "FLAGRAIL_TOKEN", code=2)

    def test_reader_token__change_refused_with_403(self, cli: Cli, server: Server) -> None:
        """A reader's change is refused with the server's 403 message."""
        _info, reader = server.store.create_token("rita", "reader", None, actor="test")
        cli("flags", "create", "a.b")
        assert_one_line_error(
            cli("kill", "a.b", "--reason", "r", "--token", reader), "403 forbidden", "operator"
        )


def test_usage_errors__one_line_naming_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing option, an unknown command or a bad value: exit 2, one line, a pointer."""
    cli = Cli(capsys, [])
    missing = cli("kill", "a.b")
    assert_one_line_error(missing, "Missing option '--reason'", "flagrail kill --help", code=2)
    assert_one_line_error(cli("nosuch"), "No such command", code=2)
    bad = cli("set", "a.b", "--env", "beta", "--rollout", "half")
    assert_one_line_error(bad, "--rollout", "flagrail set --help", code=2)


class TestDirect:
    def test_set_kill_history__direct__history_as_cli_user(
        self, direct: Cli, database_url: str
    ) -> None:
        """Break-glass changes are recorded with actor cli:<os user>, like any change."""
        assert direct("flags", "create", "a.b").code == 0
        assert direct("set", "a.b", "--env", "beta", "--on", "--rollout", "30").code == 0
        killed = direct("kill", "a.b", "--reason", "server down", "--json")
        assert sorted(killed.json()["changed"]) == ["beta", "development", "production", "staging"]
        store = SqlFlagStore(database_url)
        try:
            rows = store.list_history(HistoryQuery(flag="a.b")).items
        finally:
            store.close()
        assert {r.actor for r in rows} == {cli_actor()}
        assert [r.action for r in rows][-2:] == ["state.update", "flag.create"]
        assert {r.reason for r in rows if r.action == "kill"} == {"server down"}
        table = direct("history", "a.b", "--action", "kill")
        assert table.code == 0 and len(table.out.splitlines()) == 5
        assert cli_actor() in table.out

    def test_errors__direct__one_line(self, direct: Cli) -> None:
        """Direct mode fails the same way: one line, no traceback."""
        assert_one_line_error(direct("flags", "show", "no.such"), "does not exist")
        direct("flags", "create", "a.b")
        assert_one_line_error(direct("set", "a.b", "--env", "beta", "--rollout", "101"), "rollout")
        assert_one_line_error(direct("kill", "a.b", "--reason", ""), "reason")
        assert_one_line_error(direct("set", "a.b", "--env", "nowhere", "--on"), "nowhere")
        assert_one_line_error(direct("history", "--since", "soon"), "since")

    def test_old_schema__direct__names_db_upgrade(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """On a database never migrated, direct mode says to run flagrail db upgrade."""
        bare = Cli(capsys, ["--database-url", f"sqlite:///{tmp_path}/empty.db"])
        assert_one_line_error(bare("flags", "list"), "flagrail db upgrade")


def test_json__remote_and_direct__same_shapes(
    server: Server, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On one database, the server and break-glass paths print the same JSON."""
    monkeypatch.setenv("FLAGRAIL_TOKEN", server.token)
    remote = Cli(capsys, ["--url", server.url])
    direct = Cli(capsys, ["--database-url", server.database_url])
    remote("flags", "create", "a.b", "--owner", "team")
    remote("set", "a.b", "--env", "beta", "--on", "--tenant-on", "acme")
    for args in (("flags", "show", "a.b"), ("flags", "list"), ("env", "list")):
        assert remote(*args, "--json").json() == direct(*args, "--json").json(), args
    history_remote = remote("history", "a.b", "--json").json()
    history_direct = direct("history", "a.b", "--json").json()
    assert history_remote == history_direct
    killed = direct("kill", "a.b", "--reason", "r", "--env", "beta", "--json").json()
    assert set(killed) == {"flag", "environments", "changed"}
    unkilled = remote("unkill", "a.b", "--reason", "r", "--env", "beta", "--json").json()
    assert set(unkilled) == set(killed)


# ---------------------------------------------------------------- real subprocesses
def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGRAIL_")}
    return subprocess.run(
        [FLAGRAIL, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_token_create__subprocess__prints_only_the_token(database_url: str) -> None:
    """`TOKEN=$(flagrail token create ...)` works: stdout is the token and nothing else."""
    result = _run(
        "token", "create", "--name", "ci", "--role", "admin", "--database-url", database_url
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0] == result.stdout.strip()
    store = SqlFlagStore(database_url)
    try:
        info = store.authenticate(lines[0])
    finally:
        store.close()
    assert info is not None and (info.name, info.role.value) == ("ci", "admin")


def test_db_upgrade__fresh_then_again__schema_current_and_tokens_work(tmp_path: Path) -> None:
    """`flagrail db upgrade --database-url URL` makes the schema, and is idempotent."""
    url = f"sqlite:///{tmp_path}/fresh.db"
    for _ in range(2):
        upgraded = _run("db", "upgrade", "--database-url", url)
        assert upgraded.returncode == 0, upgraded.stderr
        assert upgraded.stdout == ""
    created = _run("token", "create", "--name", "first", "--role", "admin", "--database-url", url)
    assert created.returncode == 0 and created.stdout.startswith("frl_")


@pytest.mark.postgres
def test_serve__old_postgres_schema__refuses_naming_db_upgrade(postgres_url: str) -> None:
    """On PostgreSQL, serve refuses a schema that is behind and names `flagrail db upgrade`."""
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE alembic_version"))
    finally:
        engine.dispose()
    result = _run("serve", "--database-url", postgres_url, "--port", str(free_port()))
    assert result.returncode != 0
    assert "flagrail db upgrade" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_serve__fresh_sqlite__creates_schema_and_prints_first_admin_token(tmp_path: Path) -> None:
    """serve on a new SQLite file migrates it, prints a first admin token once, and serves."""
    url = f"sqlite:///{tmp_path}/flagrail.db"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGRAIL_")}
    proc = subprocess.Popen(
        [FLAGRAIL, "serve", "--database-url", url, "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        token = Path(proc.stdout.readline().strip()).read_text().strip()
        assert "first admin token" in banner
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(base), 30, "flagrail serve")
        flags = httpx.get(f"{base}/admin/flags", headers={"Authorization": f"Bearer {token}"})
        assert flags.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize("access_log", [True, False])
def test_serve__access_log_option__request_lines_only_when_on(
    tmp_path: Path, access_log: bool
) -> None:
    """At --log-level info, one line per request unless --no-access-log; either way the
    server answers."""
    from tests.serve import ServeProcess

    url = f"sqlite:///{tmp_path / 'flags.db'}"
    args = [] if access_log else ["--no-access-log"]
    log = tmp_path / "serve.log"
    with ServeProcess(url, log, log_level="info", args=args) as server:
        for _ in range(3):
            assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    lines = [line for line in log.read_text().splitlines() if '"GET /healthz HTTP/1.1" 200' in line]
    if access_log:
        assert len(lines) >= 3, log.read_text()[-2000:]
    else:
        assert lines == [], lines
