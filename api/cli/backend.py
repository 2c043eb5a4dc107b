"""Where the CLI's admin commands send their work: a running server, or the database.

Both are ``flags.admin_client.AdminApi``: ``AdminClient`` talks to the admin API
over HTTP (the normal path); ``api.cli.database.DatabaseAdmin`` works directly
on the database through the same ``AdminService`` (break-glass, when the server is
down), recording history under ``cli:<os user>``. Both answer the admin API's JSON,
so ``--json`` output does not depend on the path taken, and both raise
``flags.errors`` types, which the CLI prints as one line.
"""

from __future__ import annotations

from api.cli.output import CliError
from flags.admin_client import AdminApi, AdminClient
from flags.settings import Settings

__all__ = ["USER_AGENT", "connect", "open_admin"]

USER_AGENT = "flagrail-cli"
BREAK_GLASS_HINT = (
    "is it running? For break-glass changes while it is down, pass --database-url instead"
)


def connect(url: str | None, token: str | None) -> AdminClient:
    """An ``AdminClient`` on ``url`` (default ``http://<FLAGRAIL_HOST>:<FLAGRAIL_PORT>``).

    Raises ``CliError`` (exit code 2) without a token.
    """
    if not token:
        raise CliError("no API token: pass --token or set FLAGRAIL_TOKEN", exit_code=2)
    if not url:
        settings = Settings()
        url = f"http://{settings.host}:{settings.port}"
    return AdminClient(url, token, user_agent=USER_AGENT)


def open_admin(url: str | None, token: str | None, database_url: str | None) -> AdminApi:
    """The database when ``database_url`` is given, else the server at ``url``.

    Raises ``CliError`` (exit code 2) when the server path has no token.
    """
    if database_url:
        from api.cli.database import DatabaseAdmin

        return DatabaseAdmin(database_url)
    if not token:
        raise CliError(
            "no API token: pass --token or set FLAGRAIL_TOKEN "
            "(or pass --database-url to work on the database directly)",
            exit_code=2,
        )
    return connect(url, token)
