"""Fixtures of the typed-flag tests: the CLI, on a server or on the database."""

from __future__ import annotations

import pytest

from tests.cli.test_cli import Cli, Server, server  # noqa: F401 (the server fixture)


@pytest.fixture(params=["remote", "direct"])
def flagrail(
    request: pytest.FixtureRequest,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    """The CLI on a server (FLAGRAIL_URL/TOKEN) or on the database (--database-url)."""
    if request.param == "remote":
        running: Server = request.getfixturevalue("server")
        monkeypatch.setenv("FLAGRAIL_URL", running.url)
        monkeypatch.setenv("FLAGRAIL_TOKEN", running.token)
        return Cli(capsys, [])
    monkeypatch.delenv("FLAGRAIL_URL", raising=False)
    monkeypatch.delenv("FLAGRAIL_TOKEN", raising=False)
    return Cli(capsys, ["--database-url", database_url])
