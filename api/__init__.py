"""The flagrail service: the admin API, the SDK endpoints and the CLI.

Everything under ``api`` needs the server install, ``pip install "flagrail[server]"``
(FastAPI, uvicorn, SQLAlchemy, Alembic, psycopg, Typer, PyYAML, pydantic-settings).
This module itself needs only the standard library: the ``flagrail`` console script
enters at :func:`main`, so that in an SDK-only install (``pip install flagrail``) any
command answers with one line naming the server install instead of a traceback.
"""

from __future__ import annotations

import sys

__all__ = ["SERVER_INSTALL", "SERVER_MODULES", "main"]

SERVER_INSTALL = 'pip install "flagrail[server]"'

# Top-level import names of the server extra's distributions (and of what they bring:
# starlette with FastAPI, click with Typer), as pyproject.toml lists them.
SERVER_MODULES = frozenset(
    {
        "alembic",
        "click",
        "fastapi",
        "psycopg",
        "pydantic",
        "pydantic_settings",
        "sqlalchemy",
        "starlette",
        "typer",
        "uvicorn",
        "yaml",
    }
)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``flagrail`` console script: runs ``api.cli.main``.

    When a module of the server install is missing, whether at start (Typer) or inside a
    command (uvicorn for ``serve``), prints ``flagrail: error: ...`` naming
    :data:`SERVER_INSTALL` on one line to stderr and exits 1. Any other missing module
    is a bug and propagates.
    """
    try:
        from api.cli import main as run_cli

        run_cli(argv)
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in SERVER_MODULES:
            raise
        print(
            f"flagrail: error: this command needs the server install ({missing} is not "
            f"installed): {SERVER_INSTALL}",
            file=sys.stderr,
        )
        sys.exit(1)
