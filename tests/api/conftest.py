"""Admin API fixtures: the app in process (TestClient) on a database of the test's own.

``api`` runs on SQLite and on PostgreSQL (through ``database_url``). Tokens are made
directly in the store, as ``flagrail token create`` makes them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import httpx
import pytest

from flags.settings import Settings
from flags.store.sql import SqlFlagStore

with warnings.catch_warnings():  # starlette nags about httpx; the client works the same
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


class Api:
    """A TestClient on ``create_app`` plus the store under it, and a token factory."""

    def __init__(self, client: TestClient, store: SqlFlagStore, url: str) -> None:
        self.client = client
        self.store = store
        self.url = url
        self.admin = self.token("admin")

    def token(self, role: str, environments: Sequence[str] | None = None) -> str:
        """A new token's value (its name is ``<role>`` or ``<role>@<envs>``)."""
        name = role if environments is None else f"{role}@{','.join(environments)}"
        _info, secret = self.store.create_token(name, role, environments, actor="test")
        return secret

    def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """A request authenticated with ``token`` (default: the admin token; "" for none)."""
        headers = dict(kwargs.pop("headers", None) or {})
        token = self.admin if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    @staticmethod
    def error(response: httpx.Response) -> dict[str, Any]:
        """The ``error`` object of an error answer, after checking the one error shape."""
        body = response.json()
        assert set(body["error"]) == {"code", "message", "field"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return body["error"]  # type: ignore[no-any-return]

    def create_flag(self, key: str, **fields: Any) -> dict[str, Any]:
        response = self.post("/admin/flags", json={"key": key, **fields})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]


def make_app_settings(url: str) -> Settings:
    return Settings(database_url=url, scheduler=False)


@contextmanager
def open_client(url: str, store: SqlFlagStore | None = None) -> Iterator[TestClient]:
    """A TestClient (lifespan run) on ``create_app`` for ``url``, which may be unreachable."""
    from api.app import create_app

    app = create_app(make_app_settings(url), store=store or SqlFlagStore(url))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def app_client() -> Callable[..., AbstractContextManager[TestClient]]:
    """``open_client``, for tests that need an app on a database of their choosing."""
    return open_client


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    """The admin API on a migrated database of this test's own (SQLite and PostgreSQL)."""
    store = SqlFlagStore(database_url)
    with open_client(database_url, store) as client:
        yield Api(client, store, database_url)
