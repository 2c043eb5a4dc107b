"""Webhook settings from the environment (``FLAGRAIL_WEBHOOK_*``), via pydantic-settings.

``FLAGRAIL_WEBHOOK_PUBLIC_BASE_URL`` (the console's public address) makes Slack
messages link to ``/console/flags/{key}``; the backoff and window settings exist so
tests and staging can shorten the 24 h retry policy.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.webhooks.worker import WorkerSettings

__all__ = ["WebhookSettings"]


class WebhookSettings(BaseSettings):
    """Every field reads ``FLAGRAIL_WEBHOOK_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLAGRAIL_WEBHOOK_", extra="ignore")

    # Run the delivery worker inside this server.
    worker: bool = True
    public_base_url: str | None = None
    timeout: float = Field(default=5.0, gt=0, le=60)
    backoff_base: float = Field(default=1.0, gt=0)
    backoff_cap: float = Field(default=3600.0, gt=0)
    retry_window: float = Field(default=86400.0, gt=0, description="seconds")
    lease: float = Field(default=30.0, gt=0, description="seconds")
    idle_interval: float = Field(default=0.05, gt=0)

    def worker_settings(self) -> WorkerSettings:
        """The worker's pacing from these settings."""
        return WorkerSettings(
            timeout=self.timeout,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            retry_window=timedelta(seconds=self.retry_window),
            lease=timedelta(seconds=max(self.lease, self.timeout * 2)),
            idle_interval=self.idle_interval,
        )
