"""Settings of the server and the CLI from the environment (``FLAGRAIL_*``) via
pydantic-settings.

Server side: importing this module needs the server install
(``pip install "flagrail[server]"``); the SDK, the cache toolkit and the pytest plugin
never import it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
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
    # GET /metrics without a token (else it needs a reader token: its labels name flags).
    metrics_public: bool = False
    # Serve /docs, /redoc and /openapi.json (false turns all three off).
    docs: bool = True
    # Where `flagrail serve` writes the first admin token of a database with no token
    # (mode 0600; the path is printed, the token never). Default: beside a SQLite database
    # file (`flagrail.db.admin-token`), else `./flagrail-admin-token`.
    bootstrap_token_file: Path | None = None
    # Secret (at least 16 characters) for signing Redis change messages. Replicas verify
    # with keys derived from it; SDKs get their environment's key (never this secret) in
    # the authenticated snapshot response. Unset: Redis messages are hints only.
    signing_key: str | None = Field(default=None, min_length=16, repr=False)
    # Seconds a token the server has authenticated is trusted without reading it again
    # (0: read it on every request). A revocation through this server applies at once;
    # one made through another replica or the CLI's --database-url within about 0.5 s
    # (the server watches the history for revocations).
    token_cache_ttl: float = Field(default=30.0, ge=0, le=3600)
    # Seconds a pooled PostgreSQL connection may sit idle before it is pinged ahead of
    # its next use (0: at every checkout). One used more recently is not pinged: if the
    # database went away under it, that one request answers 503 and the pool replaces
    # the rest.
    db_ping_idle: float = Field(default=1.0, ge=0, le=3600)
    # How long SDK counters are kept (`90d`, `12h`; at least 1h). The server prunes older
    # ones every `telemetry_prune_interval` seconds; counters older than
    # `telemetry_rollup_after` are kept per hour instead of per second.
    telemetry_retention: timedelta = timedelta(days=90)
    telemetry_rollup_after: timedelta = timedelta(days=1)
    telemetry_prune_interval: float = Field(default=3600.0, gt=0)

    @field_validator("telemetry_retention", "telemetry_rollup_after", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        if isinstance(value, str):
            from flags.durations import parse_duration

            try:
                return parse_duration(value, "telemetry_retention")
            except ValueError as exc:  # pydantic reports it with the setting's name
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("telemetry_retention")
    @classmethod
    def _retention_floor(cls, value: timedelta) -> timedelta:
        if value < timedelta(hours=1):
            raise ValueError(f"telemetry_retention must be at least 1h, got {value}")
        return value
