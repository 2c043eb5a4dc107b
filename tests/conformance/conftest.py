"""Conformance fixtures: two identical databases, one behind a real server and
``AdminClient``, one under ``DatabaseAdmin``, on SQLite and on PostgreSQL.

Both databases start as copies of the same migrated template with the same admin
token, named as the CLI's break-glass actor (``cli:<os user>``): so an operation's
history row names the same actor whichever way it went.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from api.cli.database import DatabaseAdmin
from flags.admin_client import AdminClient
from flags.settings import Settings
from flags.store.sql import SqlFlagStore, cli_actor
from flags.testing import wait_for
from flags.testing.redis_server import free_port


@dataclass
class Pair:
    """The HTTP side (``http`` on ``http_store``'s database) and the database side
    (``direct`` on ``direct_store``'s)."""

    http: AdminClient
    http_store: SqlFlagStore
    direct: DatabaseAdmin
    direct_store: SqlFlagStore


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pair]:
    """The two backends on two identical, migrated databases of this test's own."""
    created: list[str] = []
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        urls = []
        for name in ("http.db", "direct.db"):
            shutil.copyfile(template, tmp_path / name)
            urls.append(f"sqlite:///{tmp_path / name}")
    else:
        # The first from the shared fixture (which skips, or fails under CI, without
        # PostgreSQL), the second cloned from the same template beside it.
        first: str = request.getfixturevalue("postgres_url")
        created = [request.getfixturevalue("postgres_databases").create()]
        urls = [first, f"{first.rsplit('/', 1)[0]}/{created[0]}"]
    http_store, direct_store = SqlFlagStore(urls[0]), SqlFlagStore(urls[1])
    secrets = [
        s.create_token(cli_actor(), "admin", None, actor="setup")[1]
        for s in (http_store, direct_store)
    ]
    port = free_port()
    app = create_app(Settings(database_url=urls[0], scheduler=False), store=http_store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    direct = DatabaseAdmin(urls[1])
    http = AdminClient(url, secrets[0])
    try:
        wait_for(lambda: _healthy(url), 20, "the server's /healthz")
        yield Pair(http, http_store, direct, direct_store)
    finally:
        http.close()
        direct.close()
        server.should_exit = True
        thread.join(timeout=20)
        direct_store.close()
        for name in created:
            request.getfixturevalue("postgres_databases").drop(name)
        assert not thread.is_alive(), "the server did not stop"
