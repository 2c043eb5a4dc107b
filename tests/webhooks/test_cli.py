"""``flagrail webhook ...`` on the database (``--database-url``): the same service as
``/admin/webhooks``; errors are one line and a non-zero exit."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from api.cli.webhooks import app
from flags.errors import ValidationError

runner = CliRunner()


def _run(url: str, *args: str) -> str:
    result = runner.invoke(app, [*args, "--database-url", url])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def url(database_url: str, engine: Engine) -> str:
    """A migrated database (SQLite and PostgreSQL) with the webhook tables."""
    return database_url


def test_webhook_cli__lifecycle__create_list_update_pause_delete(url: str) -> None:
    """Create prints the secret once; the other commands act on the subscription."""
    secret = _run(
        url,
        "create",
        "https://hooks.example.com/x",
        "--event",
        "state.*",
        "--env",
        "production",
        "--secret-only",
    ).strip()
    assert secret.startswith("whsec_")
    [sub] = json.loads(_run(url, "list", "--json"))["items"]
    assert sub["events"] == ["state.*"] and sub["environments"] == ["production"]
    assert secret not in _run(url, "list") + _run(url, "show", sub["id"])
    updated = json.loads(
        _run(url, "update", sub["id"], "--all-envs", "--format", "slack", "--json")
    )
    assert (updated["environments"], updated["format"]) == (None, "slack")
    _run(url, "pause", sub["id"])
    assert json.loads(_run(url, "show", sub["id"], "--json"))["paused"] is True
    _run(url, "resume", sub["id"])
    assert json.loads(_run(url, "deliveries", sub["id"], "--json"))["items"] == []
    _run(url, "delete", sub["id"])
    assert json.loads(_run(url, "list", "--json"))["items"] == []


def test_webhook_cli__bad_url__validation_error_naming_it(url: str) -> None:
    """A bad URL raises ValidationError naming ``url`` (``flagrail`` prints it as one line)."""
    result = runner.invoke(app, ["create", "ftp://x.example", "--database-url", url])
    assert result.exit_code != 0
    assert isinstance(result.exception, ValidationError)
    assert result.exception.field == "url"
