"""``flagrail user create|list|disable|enable``: console users, directly on the database (the
bootstrap path, as ``flagrail token``).

A user has a role and environment scopes exactly like a token's; the password is read
from standard input with ``--password-stdin`` (one line), else prompted for twice,
never taken as an argument (it would land in the shell history and ``ps``).
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from api.cli.database_option import DatabaseUrl, database_url
from api.cli.output import CliError, print_json, print_table
from flags.errors import AlreadyExistsError
from flags.model import Role
from flags.store.sql import SqlFlagStore, cli_actor
from flags.store.users import UserStore

app = typer.Typer(help="Console users (directly on the database).", no_args_is_help=True)


@contextmanager
def _users(url: str | None) -> Iterator[UserStore]:
    store = SqlFlagStore(database_url(url))
    try:
        users = UserStore(store.engine)
        users.start()
        yield users
    finally:
        store.close()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise CliError("--password-stdin: standard input is empty")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise CliError("no terminal to prompt for the password: use --password-stdin")
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="User name (a-z 0-9 . _ -): user:<name>."),
    role: str = typer.Option(..., "--role", help="reader, operator, editor or admin."),
    env: list[str] = typer.Option(None, "--env", help="Scope to this environment (repeat)."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password (one line) from standard input."
    ),
    database_url_opt: str | None = DatabaseUrl,
) -> None:
    """Create a console user (password at least 12 characters)."""
    password = _password(password_stdin)
    with _users(database_url_opt) as users:
        user = users.create_user(name, password, role, env or None, actor=cli_actor())
    scope = ",".join(user.environments) if user.environments else "all environments"
    typer.echo(f"created user {user.name} ({user.role.value}, {scope})")


@app.command("list")
def list_users(
    as_json: bool = typer.Option(False, "--json"), database_url_opt: str | None = DatabaseUrl
) -> None:
    with _users(database_url_opt) as users:
        items = users.list_users()
    rows = [
        {
            "name": u.name,
            "role": u.role.value,
            "environments": list(u.environments) if u.environments is not None else None,
            "disabled": u.disabled,
            "created_at": u.created_at.isoformat(),
        }
        for u in items
    ]
    if as_json:
        print_json({"items": rows})
        return
    print_table(
        ["name", "role", "environments", "disabled", "created_at"],
        [
            [
                r["name"],
                r["role"],
                ",".join(r["environments"] or ["*"]),
                "yes" if r["disabled"] else "",
                r["created_at"],
            ]
            for r in rows
        ],
    )


@app.command("disable")
def disable(
    name: str = typer.Option(..., "--name"), database_url_opt: str | None = DatabaseUrl
) -> None:
    """Disable a user: their sessions end, their tokens stop, and they cannot log in."""
    with _users(database_url_opt) as users:
        users.set_disabled(name, True, actor=cli_actor())
    typer.echo(f"disabled user {name}")


@app.command("enable")
def enable(
    name: str = typer.Option(..., "--name"), database_url_opt: str | None = DatabaseUrl
) -> None:
    """Enable a disabled user again: they can log in, and their tokens work again."""
    with _users(database_url_opt) as users:
        users.set_disabled(name, False, actor=cli_actor())
    typer.echo(f"enabled user {name}")


FIRST_USER = "admin"


def console_login_file(token_file: Path) -> Path:
    """Where the first console login goes: beside the first admin token
    (``flagrail.db.admin-token`` -> ``flagrail.db.console-login``)."""
    name = token_file.name
    if name.endswith("admin-token"):
        return token_file.with_name(name[: -len("admin-token")] + "console-login")
    return token_file.with_name(name + ".console-login")


def bootstrap_user(url: str, login_file: Path) -> Path | None:
    """On a database with no console user, create ``admin`` (role admin, every
    environment) with a random password and write ``user`` and ``password`` lines to
    ``login_file`` (mode 0600); return its path, else None.

    The password goes to the file and nowhere else. It is written to a temporary file
    first, so a user is never created whose password could not be written; replicas
    starting together create one user between them (the name is the primary key).
    Raises ``CliError`` when the file cannot be written.
    """
    with _users(url) as users:
        if users.count_users():
            return None
        try:
            handle, temporary = tempfile.mkstemp(
                dir=login_file.parent, prefix=f".{login_file.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise CliError(
                f"cannot write the first console login to {login_file}: {exc.strerror} "
                "(set FLAGRAIL_BOOTSTRAP_TOKEN_FILE to a writable path)"
            ) from exc
        password = secrets.token_urlsafe(18)
        created = False
        try:
            with os.fdopen(handle, "w", encoding="ascii") as file:
                file.write(f"user: {FIRST_USER}\npassword: {password}\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                users.create_user(FIRST_USER, password, Role.ADMIN, actor=cli_actor())
            except AlreadyExistsError:  # another replica created it meanwhile
                return None
            created = True
            os.replace(temporary, login_file)
        finally:
            if not created and os.path.exists(temporary):
                os.unlink(temporary)
        return login_file
