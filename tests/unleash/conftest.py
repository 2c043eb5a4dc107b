"""Fixtures of the Unleash tests: a real flagrail server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from unleash_server import FlagrailServer, serve


@pytest.fixture
def flagrail_server(database_url: str) -> Iterator[FlagrailServer]:
    """A real uvicorn flagrail server on ``database_url`` (SQLite and PostgreSQL)."""
    with serve(database_url) as server:
        yield server


@pytest.fixture
def sqlite_server(sqlite_url: str) -> Iterator[FlagrailServer]:
    """A real flagrail server on SQLite only: for SDK-side tests, where the
    database behind the server makes no difference."""
    with serve(sqlite_url) as server:
        yield server
