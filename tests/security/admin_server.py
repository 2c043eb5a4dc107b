"""A real admin server for the security tests: ``create_app`` under uvicorn on a free
port, on a SQLite database of the test's own, with an environment, flags and tokens.

Every wait is a bounded poll of a condition; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import uvicorn

from api.app import create_app
from flags.model import StateChange
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for
from flags.testing.redis_server import free_port

ENVIRONMENTS = ("production", "staging")


class AdminServer:
    """The app served over real TCP. ``tokens`` maps a name to its secret; ``admin`` is an
    unscoped admin's. Use as a context manager (``close`` stops the server)."""

    def __init__(self, database_url: str, **settings: Any) -> None:
        self.database_url = database_url
        self.store = SqlFlagStore(database_url)
        known = {e.name for e in self.store.list_environments()}
        for env in ENVIRONMENTS:
            if env not in known:
                self.store.create_environment(env, actor="test")
        self.tokens: dict[str, str] = {}
        self.admin = self.token("root", "admin")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(
            Settings(database_url=database_url, scheduler=False, **settings), store=self.store
        )
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def token(
        self,
        name: str,
        role: str,
        environments: list[str] | None = None,
        flags: list[str] | None = None,
    ) -> str:
        """A new token's secret (made directly in the database)."""
        _info, secret = self.store.create_token(name, role, environments, actor="test", flags=flags)
        self.tokens[name] = secret
        return secret

    def flag(self, key: str, *, enabled: bool = True) -> None:
        """A flag, on for everyone in every environment."""
        self.store.create_flag(key, actor="test")
        for env in ENVIRONMENTS:
            self.store.update_state(
                key, env, StateChange(enabled=enabled, rollout=100), actor="test"
            )

    def request(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def history(self, **params: Any) -> list[dict[str, Any]]:
        """History rows as the unscoped admin sees them, newest first."""
        response = self.request("GET", "/admin/history", self.admin, params=params)
        assert response.status_code == 200, response.text
        return response.json()["items"]  # type: ignore[no-any-return]

    def __enter__(self) -> AdminServer:
        self.thread.start()
        wait_for(self._healthy, 15, "the server's /healthz")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.should_exit = True
            self.thread.join(timeout=15)
        self.store.close()


def error_field(response: httpx.Response) -> str | None:
    """The ``field`` of an error answer's JSON body."""
    return response.json()["error"]["field"]  # type: ignore[no-any-return]
