"""Console users: the store (argon2id, sessions, throttle), ``flagrail user`` and the
first console login."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli.users import bootstrap_user, console_login_file
from flags.errors import AlreadyExistsError, UnauthenticatedError, ValidationError
from flags.store.sql import SqlFlagStore
from flags.store.users import LoginThrottle, LoginThrottledError, UserStore

from .conftest import FAST_HASHER, PASSWORD


@pytest.fixture
def users(database_url: str) -> UserStore:
    store = SqlFlagStore(database_url)
    u = UserStore(store.engine, hasher=FAST_HASHER)
    u.start()
    return u


class TestUserStore:
    def test_create_user__hash_is_argon2id__verify(self, users: UserStore) -> None:
        users.create_user("alice", PASSWORD, "editor", ["production"], actor="test")
        with users.engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT password_hash FROM console_users").scalar()
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
        user = users.verify("alice", PASSWORD)
        assert user.actor == "user:alice" and user.environments == ("production",)

    def test_verify__wrong_unknown_or_disabled__same_error(self, users: UserStore) -> None:
        users.create_user("alice", PASSWORD, "editor", actor="test")
        for name, password in (("alice", "nope nope nope"), ("bob", PASSWORD)):
            with pytest.raises(UnauthenticatedError, match="wrong user name or password"):
                users.verify(name, password)
        users.set_disabled("alice", actor="test")
        with pytest.raises(UnauthenticatedError):
            users.verify("alice", PASSWORD)

    def test_create_user__bad_input__names_the_field(self, users: UserStore) -> None:
        for kwargs, field in (
            ({"name": "Alice!"}, "name"),
            ({"password": "short"}, "password"),
            ({"role": "client"}, "role"),
        ):
            args = {"name": "alice", "password": PASSWORD, "role": "editor", **kwargs}
            with pytest.raises(ValidationError) as caught:
                users.create_user(args["name"], args["password"], args["role"], actor="test")
            assert caught.value.field == field
        users.create_user("alice", PASSWORD, "editor", actor="test")
        with pytest.raises(AlreadyExistsError):
            users.create_user("alice", PASSWORD, "editor", actor="test")

    def test_session__id_stored_hashed__revocable(self, users: UserStore) -> None:
        user = users.create_user("alice", PASSWORD, "admin", actor="test")
        session_id, session = users.open_session(user)
        with users.engine.connect() as conn:
            ids = [r[0] for r in conn.exec_driver_sql("SELECT id_hash FROM console_sessions")]
        assert session_id not in ids and len(ids) == 1
        assert users.session(session_id) == session
        users.revoke_session(session_id)
        assert users.session(session_id) is None

    def test_disable__ends_live_sessions(self, users: UserStore) -> None:
        session_id, _ = users.open_session(
            users.create_user("alice", PASSWORD, "admin", actor="test")
        )
        users.set_disabled("alice", actor="test")
        assert users.session(session_id) is None


def test_throttle__sixth_failure_in_a_minute__refused_per_user_and_address() -> None:
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for i in range(5):
        throttle.check("alice", f"10.0.0.{i}")
        throttle.failed("alice", f"10.0.0.{i}")
    with pytest.raises(LoginThrottledError):
        throttle.check("alice", "10.0.0.99")  # the user, from anywhere
    for i in range(5):
        throttle.failed(f"user{i}", "10.9.9.9")
    with pytest.raises(LoginThrottledError):
        throttle.check("someone", "10.9.9.9")  # the address, for anyone
    now[0] = 61.0
    throttle.check("alice", "10.9.9.9")


def _flagrail(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from api import main; main()", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli__user_create_list_disable(sqlite_url: str) -> None:
    db = ("--database-url", sqlite_url)
    created = _flagrail(
        "user", "create", "--name", "alice", "--role", "editor", "--env", "production",
        "--password-stdin", *db, stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert PASSWORD not in created.stdout + created.stderr
    listed = _flagrail("user", "list", "--json", *db)
    assert '"name": "alice"' in listed.stdout and '"production"' in listed.stdout
    short = _flagrail(
        "user", "create", "--name", "bob", "--role", "editor", "--password-stdin", *db,
        stdin="short\n",
    )  # fmt: skip
    assert short.returncode == 1 and short.stderr.count("\n") == 1
    assert "password" in short.stderr and "Traceback" not in short.stderr
    assert _flagrail("user", "disable", "--name", "alice", *db).returncode == 0
    missing = _flagrail("user", "disable", "--name", "nobody", *db)
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_bootstrap_user__empty_database__one_login_file_0600(
    sqlite_url: str, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    target = console_login_file(secrets / "flagrail.db.admin-token")
    assert target.name == "flagrail.db.console-login"
    assert bootstrap_user(sqlite_url, target) == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    lines = dict(line.split(": ", 1) for line in target.read_text().splitlines())
    store = SqlFlagStore(sqlite_url)
    try:
        users = UserStore(store.engine)
        assert users.verify(lines["user"], lines["password"]).role.value == "admin"
        assert bootstrap_user(sqlite_url, secrets / "again") is None  # a user exists
    finally:
        store.close()
    assert sorted(p.name for p in secrets.iterdir()) == [target.name]  # no leftovers
