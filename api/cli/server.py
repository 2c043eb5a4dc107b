"""``flagrail serve``, ``flagrail db upgrade`` and ``flagrail db check``."""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from sqlalchemy import Connection, create_engine, func, select
from sqlalchemy.engine import make_url

from api.cli.database_option import DatabaseUrl, database_url
from api.cli.output import CliError
from flags.errors import ConflictError
from flags.model import Role
from flags.settings import Settings
from flags.store.sql import SqlFlagStore, cli_actor
from flags.store.tables import tokens

if TYPE_CHECKING:
    from fastapi import FastAPI

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(database_url_opt: str | None = DatabaseUrl) -> None:
    """Create or upgrade the schema to the newest migration."""
    from flags.store.schema import upgrade

    url = database_url(database_url_opt)
    upgrade(url)
    typer.echo(f"schema is current on {_redact(url)}", err=True)


@db_app.command("check")
def db_check(database_url_opt: str | None = DatabaseUrl) -> None:
    """Compare the table models with the database; exit 1 listing each difference (drift).

    The database must be at the newest migration (else: exit 1, run `flagrail db upgrade`).
    """
    from flags.store.schema import schema_drift

    url = database_url(database_url_opt)
    differences = schema_drift(url)
    if differences:
        for line in differences:
            typer.echo(line)
        raise CliError(
            f"schema drift on {_redact(url)}: {len(differences)} difference(s) between the "
            "models and the database (listed above)"
        )
    typer.echo(f"no drift: the database at {_redact(url)} matches the models", err=True)


@db_app.command("grant")
def db_grant(
    role: str = typer.Argument(..., help="The PostgreSQL role `flagrail serve` connects as."),
    database_url_opt: str | None = DatabaseUrl,
) -> None:
    """Grant an application role least privilege (PostgreSQL; run as the tables' owner).

    The role may read and write what the server maintains, only read and append history,
    and owns nothing: run migrations as the owner, the server as this role.
    """
    from flags.store.schema import grant_app_role

    url = database_url(database_url_opt)
    for statement in grant_app_role(url, role):
        typer.echo(statement)
    typer.echo(f"granted {role!r} least privilege on {_redact(url)}", err=True)


def _redact(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<database>"


def prepare_database(url: str) -> None:
    """SQLite: create or upgrade the schema. Others: refuse an old schema.

    Raises ``SchemaOutdatedError`` naming ``flagrail db upgrade``.
    """
    from flags.store.schema import check_schema, upgrade

    if url.startswith("sqlite"):
        upgrade(url)
        return
    engine = create_engine(url)
    try:
        check_schema(engine)
    finally:
        engine.dispose()


BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
# Key of the PostgreSQL advisory lock that serializes first-token bootstraps ("frl_boot").
_BOOTSTRAP_LOCK = 0x66726C5F626F6F74


class _TokensExistError(ConflictError):
    """The database has a token already: there is nothing to bootstrap."""


class _FirstTokenStore(SqlFlagStore):
    """A store whose write transactions begin by making sure the database has no token.

    ``create_token`` runs in one such transaction, so "no tokens yet" is checked in the
    transaction that inserts the token and its history row. Concurrent bootstraps are
    serialized: on PostgreSQL by a transaction-scoped advisory lock taken before the check
    (a second server waits, then sees the first one's committed token); on SQLite by the
    store's write transactions, which begin IMMEDIATE and so hold the write lock already.
    """

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with super().transaction() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_BOOTSTRAP_LOCK)))
            if conn.execute(select(tokens.c.id).limit(1)).first() is not None:
                raise _TokensExistError("the database has a token already")
            yield conn


def default_token_file(url: str) -> Path:
    """Where the first admin token goes unless ``FLAGRAIL_BOOTSTRAP_TOKEN_FILE`` says:
    beside a SQLite database file (``flagrail.db`` -> ``flagrail.db.admin-token``), else
    ``flagrail-admin-token`` in the current directory."""
    database = make_url(url).database if url.startswith("sqlite") else None
    if database and database != ":memory:" and not database.startswith("file:"):
        return Path(database + ".admin-token").resolve()
    return Path("flagrail-admin-token").resolve()


def bootstrap_token(url: str, token_file: Path) -> Path | None:
    """On a database with no token at all, create a first admin token and write it to
    ``token_file`` (mode 0600, replacing the file); return that file's path, else None.

    The check and the insert are one transaction, serialized across processes: replicas
    starting together on one empty database mint one token between them, and only the
    one that minted it writes a file. The token goes to the file and nowhere else (never
    to standard output or a log). The file's directory must exist; the token is written
    to a temporary file there first, so a token is never minted that cannot be written.

    Raises ``CliError`` when the file cannot be written.
    """
    store = _FirstTokenStore(url)
    try:
        if store.list_tokens():  # the usual restart: skip the file system altogether
            return None
        try:
            handle, temporary = tempfile.mkstemp(
                dir=token_file.parent, prefix=f".{token_file.name}.", suffix=".tmp"
            )
        except OSError as exc:
            raise CliError(
                f"cannot write the first admin token to {token_file}: {exc.strerror} "
                "(set FLAGRAIL_BOOTSTRAP_TOKEN_FILE to a writable path)"
            ) from exc
        minted = False
        try:
            try:
                _info, secret = store.create_token(
                    BOOTSTRAP_TOKEN_NAME, Role.ADMIN, None, actor=cli_actor()
                )
            except _TokensExistError:  # another server minted it between the two checks
                return None
            minted = True
            with os.fdopen(handle, "w", encoding="ascii") as file:
                handle = -1  # the file object owns the descriptor now
                file.write(secret + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, token_file)
        except OSError as exc:
            if not minted:
                raise
            raise CliError(
                f"the first admin token was created but not written to {token_file} "
                f"({exc.strerror}): if {temporary} holds it, move it there; else create an "
                "admin token with `flagrail token create --role admin --database-url URL`"
            ) from exc
        finally:
            if handle != -1:
                os.close(handle)
            if not minted:
                os.unlink(temporary)
        return token_file
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str | None = typer.Option(None, "--host", envvar="FLAGRAIL_HOST"),
        port: int | None = typer.Option(None, "--port", envvar="FLAGRAIL_PORT", min=1, max=65535),
        database_url_opt: str | None = DatabaseUrl,
        log_level: str = typer.Option("info", "--log-level"),
        workers: int = typer.Option(
            1,
            "--workers",
            envvar="FLAGRAIL_WORKERS",
            min=1,
            max=64,
            help="Server processes sharing the port; changes reach every worker's "
            "streams through the database (and Redis when configured).",
        ),
        access_log: bool = typer.Option(
            True,
            "--access-log/--no-access-log",
            envvar="FLAGRAIL_ACCESS_LOG",
            help="One log line per request at --log-level info (about 0.1 ms of server "
            "CPU each, a third of an SDK poll's cost); the history audits every change "
            "either way.",
        ),
    ) -> None:
        """Run the admin API (SQLite schema is created or upgraded on start).

        On a database with no token, writes a first admin token to
        FLAGRAIL_BOOTSTRAP_TOKEN_FILE (mode 0600) and prints that file's path.

        With ``--workers N`` (N > 1), N processes accept on one socket, each a whole
        replica (its own streams, fan-out and background services); the schema and
        first-token steps run once, in this process, before they start.
        """
        import uvicorn

        from api.app import create_app

        overrides: dict[str, object] = {}
        if host:
            overrides["host"] = host
        if port:
            overrides["port"] = port
        if database_url_opt:
            overrides["database_url"] = database_url_opt
        settings = Settings(**overrides)  # type: ignore[arg-type]
        prepare_database(settings.database_url)
        token_file = settings.bootstrap_token_file or default_token_file(settings.database_url)
        written = bootstrap_token(settings.database_url, token_file)
        if written is not None:
            # The path, never the token: standard output ends up in logs.
            sys.stdout.write(
                "flagrail: first admin token written to this file (mode 0600, keep it safe):\n"
                f"{written}\n"
            )
            sys.stdout.flush()
        from api.cli.users import bootstrap_user, console_login_file

        login = bootstrap_user(settings.database_url, console_login_file(token_file))
        if login is not None:
            # The path again, never the password.
            sys.stdout.write(
                "flagrail: first console login (user admin) written to this file "
                f"(mode 0600), sign in at http://{settings.host}:{settings.port}/console:\n{login}\n"
            )
            sys.stdout.flush()
        try:
            if workers > 1:
                # The workers build their own app from FLAGRAIL_* (they are spawned, not
                # forked): hand them this command's options through the environment.
                for name, value in overrides.items():
                    os.environ[f"FLAGRAIL_{name.upper()}"] = str(value)
                uvicorn.run(
                    "api.cli.server:worker_app",
                    factory=True,
                    workers=workers,
                    host=settings.host,
                    port=settings.port,
                    log_level=log_level,
                    access_log=access_log,
                )
                return
            asgi_app = create_app(settings)
            _freeze_heap()
            uvicorn.run(
                asgi_app,
                host=settings.host,
                port=settings.port,
                log_level=log_level,
                access_log=access_log,
            )
        except SystemExit as exc:
            raise CliError(f"server exited ({exc.code})") from exc


def worker_app() -> FastAPI:
    """The app of one ``flagrail serve --workers N`` process, from ``FLAGRAIL_*``."""
    from api.app import create_app

    app = create_app(Settings())
    _freeze_heap()
    return app


def _freeze_heap() -> None:
    """What exists now lives as long as the server: keep it out of the collector's full
    passes, which otherwise stall requests for ~40 ms now and then."""
    gc.collect()
    gc.freeze()
