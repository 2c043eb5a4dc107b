"""Settings of the server and the CLI from the environment (``FLAGRAIL_*``) via
pydantic-settings.

Server side: importing this module needs the server install
(``pip install "flagrail[server]"``); the SDK, the cache toolkit and the pytest plugin
never import it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Server and CLI settings. Every field reads ``FLAGRAIL_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLAGRAIL_", extra="ignore")

    database_url: str = "sqlite:///./flagrail.db"
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # Body size limit for every request, in bytes.
    max_body_bytes: int = 1024 * 1024
    # Seconds between SSE heartbeat comments.
    heartbeat_interval: float = 15.0
    # Run the rollout-plan scheduler inside this server.
    scheduler: bool = True
    # Where `flagrail serve` writes the first admin token of a database with no token
    # (mode 0600; the path is printed, the token never). Default: beside a SQLite database
    # file (`flagrail.db.admin-token`), else `./flagrail-admin-token`.
    bootstrap_token_file: Path | None = None
