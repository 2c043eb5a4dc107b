"""Helpers for the Unleash tests: a real flagrail server, flags in every shape, a bounded wait."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn

from api.app import create_app
from flags.model import StateChange
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for
from flags.testing.redis_server import free_port


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

    def sdk_snapshot(self, environment: str = "production") -> dict[str, object]:
        """The body of flagrail's own ``GET /sdk/v1/snapshot``, with the client token."""
        token = self.production if environment == "production" else self.staging
        response = httpx.get(
            f"{self.url}/sdk/v1/snapshot",
            params={"environment": environment},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10.0,
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


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


UNUSUAL = ["tënant-ü", "ACME Corp", " padded ", "42", "x" * 200]
TENANTS = [f"tenant-{i}" for i in range(10_000 - len(UNUSUAL))] + UNUSUAL
ON = frozenset(TENANTS[0:300:3]) | {"tënant-ü"}
OFF = frozenset(TENANTS[1:300:3]) | {"ACME Corp"}

# Every shape the issue names, and combinations; applied to production.
SHAPES: dict[str, StateChange] = {
    "plain-on": StateChange(enabled=True, rollout=100),
    "plain-off": StateChange(enabled=False, rollout=100, tenants_on=ON),
    "killed": StateChange(enabled=True, rollout=100),
    "killed-combo": StateChange(enabled=True, rollout=50, tenants_on=ON, tenants_off=OFF),
    "tenants-on": StateChange(enabled=True, rollout=0, tenants_on=ON),
    "tenants-off": StateChange(enabled=True, rollout=100, tenants_off=OFF),
    "rollout-0": StateChange(enabled=True, rollout=0),
    "rollout-1": StateChange(enabled=True, rollout=1),
    "rollout-50": StateChange(enabled=True, rollout=50),
    "rollout-99": StateChange(enabled=True, rollout=99),
    "rollout-100": StateChange(enabled=True, rollout=100),
    "combo-50": StateChange(enabled=True, rollout=50, tenants_on=ON, tenants_off=OFF),
    "combo-1-off": StateChange(enabled=True, rollout=1, tenants_off=OFF),
    "combo-99-on": StateChange(enabled=True, rollout=99, tenants_on=ON),
    "combo-0-both": StateChange(enabled=True, rollout=0, tenants_on=ON, tenants_off=OFF),
    "combo-100-both": StateChange(enabled=True, rollout=100, tenants_on=ON, tenants_off=OFF),
}
KILLED = ("killed", "killed-combo")
STAGING_ONLY = "staging-only"


def populate(store: SqlFlagStore) -> None:
    for key, change in SHAPES.items():
        store.create_flag(key, actor="test")
        store.update_state(key, "production", change, actor="test")
        # Staging differs everywhere, so a leak would change production answers.
        store.update_state(key, "staging", StateChange(enabled=True, rollout=100), actor="test")
    for key in KILLED:
        store.kill(key, ["production"], reason="drill", actor="test")
    store.create_flag(STAGING_ONLY, actor="test")
    store.update_state(
        STAGING_ONLY,
        "staging",
        StateChange(enabled=True, rollout=100, tenants_on=frozenset({"staging-secret"})),
        actor="test",
    )
    store.create_flag("archived", actor="test")
    store.update_state(
        "archived", "production", StateChange(enabled=True, rollout=100), actor="test"
    )
    store.archive_flag("archived", actor="test")
