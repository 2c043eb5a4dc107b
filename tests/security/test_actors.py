"""Issue #14, finding 5: a claimed actor cannot hide the token behind a change.

Through a real server: every history row names the token (id and name) that made the
change; ``X-Flagrail-Actor`` is refused (403 naming the header) from any token but a
``guard``'s, and a guard's claim is kept in a field of its own beside its token. The
break-glass CLI records ``cli:<user>`` with no token.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security.admin_server import AdminServer, error_field

from api.cli.database import DatabaseAdmin
from flags.store.sql import cli_actor

FLAG = "checkout.v2"
CLAIM = {"X-Flagrail-Actor": "guard:anything:1"}


@pytest.fixture
def server(sqlite_url: str) -> Iterator[AdminServer]:
    with AdminServer(sqlite_url) as running:
        running.flag(FLAG)
        yield running


@pytest.mark.parametrize("role", ["reader", "operator", "editor", "admin"])
def test_claimed_actor__below_guard__refused_and_nothing_recorded(
    server: AdminServer, role: str
) -> None:
    """Any reader-or-above token sending X-Flagrail-Actor hears 403 naming the header."""
    # When: the token reads, and (where its role may) kills, with a claimed actor
    token = server.token(f"{role}-token", role)
    read = server.request("GET", "/admin/flags", token, headers=CLAIM)
    kill = server.request(
        "POST", f"/admin/flags/{FLAG}/kill", token, headers=CLAIM, json={"reason": "forged"}
    )
    # Then: both are refused, naming the header, and no kill was recorded
    assert read.status_code == 403 and error_field(read) == "X-Flagrail-Actor"
    assert kill.status_code == 403
    if role != "reader":
        assert error_field(kill) == "X-Flagrail-Actor"
    assert server.history(action="kill") == []


def test_claimed_actor__guard__kept_apart_beside_its_token(server: AdminServer) -> None:
    """A guard's claim is recorded in claimed_actor, with the token's id and name."""
    token = server.token("auth-guard", "guard", ["production"])
    response = server.request(
        "POST", f"/admin/flags/{FLAG}/kill", token, headers=CLAIM, json={"reason": "breach"}
    )
    assert response.status_code == 200, response.text
    (row,) = server.history(action="kill")
    guard_id = next(t.id for t in server.store.list_tokens() if t.name == "auth-guard")
    assert row["claimed_actor"] == "guard:anything:1"
    assert (row["token_id"], row["token_name"]) == (guard_id, "auth-guard")


def test_actor__every_token_change__names_the_token(server: AdminServer) -> None:
    """Without a claim, the actor is the token's name and the row names its id."""
    token = server.token("deployer", "editor")
    response = server.request(
        "PATCH", f"/admin/flags/{FLAG}/environments/staging", token, json={"rollout": 50}
    )
    assert response.status_code == 200, response.text
    (row,) = server.history(action="state.update", environment="staging")[:1]
    editor_id = next(t.id for t in server.store.list_tokens() if t.name == "deployer")
    assert (row["actor"], row["token_id"], row["token_name"], row["claimed_actor"]) == (
        "deployer",
        editor_id,
        "deployer",
        None,
    )


def test_actor__malformed_claim_from_guard__422_naming_the_header(server: AdminServer) -> None:
    """Even a guard may only claim guard:<host>:<pid>."""
    token = server.token("g", "guard")
    response = server.request(
        "POST",
        f"/admin/flags/{FLAG}/kill",
        token,
        headers={"X-Flagrail-Actor": "alice"},
        json={"reason": "r"},
    )
    assert response.status_code == 422 and error_field(response) == "X-Flagrail-Actor"
    assert server.history(action="kill") == []


def test_actor__break_glass_cli__cli_user_and_no_token(server: AdminServer) -> None:
    """A change made directly on the database records cli:<user> and no token."""
    with DatabaseAdmin(server.database_url) as admin:
        admin.kill("production", FLAG, reason="break glass")
    (row,) = server.history(action="kill")
    assert (row["actor"], row["token_id"], row["token_name"]) == (cli_actor(), None, None)
