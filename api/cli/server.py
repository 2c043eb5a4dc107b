"""``flagrail serve``, ``flagrail db upgrade`` and ``flagrail db check``."""

from __future__ import annotations

import gc
import sys

import typer
from sqlalchemy import create_engine

from api.cli.output import CliError
from flags.settings import Settings

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)

DatabaseUrl = typer.Option(
    None,
    "--database-url",
    envvar="FLAGRAIL_DATABASE_URL",
    help="SQLAlchemy URL (default sqlite:///./flagrail.db).",
)


def database_url(value: str | None) -> str:
    return value or Settings().database_url


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


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

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


def bootstrap_token(url: str) -> str | None:
    """On a database with no tokens at all, create a first admin token and return it."""
    from flags.store.sql import SqlFlagStore, cli_actor

    store = SqlFlagStore(url)
    try:
        if store.list_tokens():
            return None
        _info, secret = store.create_token("bootstrap-admin", "admin", None, actor=cli_actor())
        return secret
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: str | None = typer.Option(None, "--host", envvar="FLAGRAIL_HOST"),
        port: int | None = typer.Option(None, "--port", envvar="FLAGRAIL_PORT", min=1, max=65535),
        database_url_opt: str | None = DatabaseUrl,
        log_level: str = typer.Option("info", "--log-level"),
    ) -> None:
        """Run the admin API (SQLite schema is created or upgraded on start)."""
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
        token = bootstrap_token(settings.database_url)
        if token:
            sys.stdout.write(
                "flagrail: first admin token (shown once, keep it safe):\n" + token + "\n"
            )
            sys.stdout.flush()
        try:
            asgi_app = create_app(settings)
            # What exists now lives as long as the server: keep it out of the collector's
            # full passes, which otherwise stall requests for ~40 ms now and then.
            gc.collect()
            gc.freeze()
            uvicorn.run(asgi_app, host=settings.host, port=settings.port, log_level=log_level)
        except SystemExit as exc:
            raise CliError(f"server exited ({exc.code})") from exc
