"""Issue #14, finding 8: an admin scoped to one environment sees only the tokens within
its scope, in the token list and in the history (``?action=token.create``).

Through a real server, with the unscoped bootstrap-like admin, a staging token and a
production token in the database.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security.admin_server import AdminServer


@pytest.fixture
def server(sqlite_url: str) -> Iterator[AdminServer]:
    with AdminServer(sqlite_url) as running:
        running.token("prod-admin", "admin", ["production"])
        running.token("prod-sdk", "client", ["production"])
        running.token("staging-sdk", "client", ["staging"])
        running.token("both-reader", "reader", ["production", "staging"])
        yield running


def _names(rows: list[dict[str, object]]) -> set[object]:
    return {(row["after"] or {})["name"] for row in rows}  # type: ignore[index]


def test_history__scoped_admin__token_rows_within_scope_only(server: AdminServer) -> None:
    """The attack: list token.create rows with a production-scoped admin token."""
    scoped = server.tokens["prod-admin"]
    response = server.request("GET", "/admin/history", scoped, params={"action": "token.create"})
    assert response.status_code == 200, response.text
    # Then: only tokens scoped within production, not the unscoped admin, not staging's
    assert _names(response.json()["items"]) == {"prod-admin", "prod-sdk"}
    # And: the unscoped admin still sees every token row
    assert _names(server.history(action="token.create")) == {
        "root",
        "prod-admin",
        "prod-sdk",
        "staging-sdk",
        "both-reader",
    }


def test_history__scoped_admin__revoke_rows_too(server: AdminServer) -> None:
    """A revoke of an out-of-scope token is as hidden as its creation."""
    staging = next(t for t in server.store.list_tokens() if t.name == "staging-sdk")
    assert server.request("DELETE", f"/admin/tokens/{staging.id}", server.admin).status_code == 200
    scoped = server.tokens["prod-admin"]
    response = server.request("GET", "/admin/history", scoped, params={"action": "token.revoke"})
    assert response.json()["items"] == []
    assert len(server.history(action="token.revoke")) == 1


def test_tokens__scoped_admin__listing_within_scope(server: AdminServer) -> None:
    """GET /admin/tokens shows the same tokens."""
    response = server.request("GET", "/admin/tokens", server.tokens["prod-admin"])
    assert {t["name"] for t in response.json()["items"]} == {"prod-admin", "prod-sdk"}
