"""Helpers for the Unleash tests: a real flagrail server and a bounded wait."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from api.app import create_app
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.testing.redis_server import free_port


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class FlagrailServer:
    url: str  # http://127.0.0.1:<port>
    store: SqlFlagStore
    production: str  # client token scoped to production
    staging: str  # client token scoped to staging

    @property
    def unleash_url(self) -> str:
        """What UnleashClient takes: the API root, ending in ``/api``."""
        return f"{self.url}/api"


@contextmanager
def serve(database_url: str) -> Iterator[FlagrailServer]:
    """A migrated database with two client tokens, served by uvicorn in a thread."""
    store = SqlFlagStore(database_url)
    _, production = store.create_token("prod-sdk", "client", ["production"], actor="test")
    _, staging = store.create_token("staging-sdk", "client", ["staging"], actor="test")
    app = create_app(Settings(database_url=database_url, scheduler=False))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="flagrail-test-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 15.0, "the flagrail server's /healthz")
        yield FlagrailServer(url, store, production, staging)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        store.close()
        assert not thread.is_alive(), "the test server did not stop"
