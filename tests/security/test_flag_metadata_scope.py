"""Issue #14, finding 12: flag-level metadata (description, owner, tags, kind) is shared
by every environment, so ``PATCH /admin/flags/{key}`` needs an unscoped editor, as
archiving does. Through a real server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from security.admin_server import AdminServer

FLAG = "checkout.v2"


@pytest.fixture
def server(sqlite_url: str) -> Iterator[AdminServer]:
    with AdminServer(sqlite_url) as running:
        running.flag(FLAG)
        yield running


@pytest.mark.parametrize("role", ["editor", "admin"])
def test_update_flag__scoped__403_and_unchanged(server: AdminServer, role: str) -> None:
    """The attack: a staging-scoped editor rewrites the flag everyone shares."""
    scoped = server.token(f"staging-{role}", role, ["staging"])
    response = server.request(
        "PATCH", f"/admin/flags/{FLAG}", scoped, json={"owner": "mallory", "kind": "operational"}
    )
    assert response.status_code == 403, response.text
    assert "every environment" in response.json()["error"]["message"]
    record = server.store.get_flag(FLAG)
    assert (record.flag.owner, server.history(action="flag.update")) == (None, [])


def test_update_flag__unscoped_editor__allowed(server: AdminServer) -> None:
    editor = server.token("editor", "editor")
    response = server.request("PATCH", f"/admin/flags/{FLAG}", editor, json={"owner": "team-a"})
    assert response.status_code == 200, response.text
    assert server.store.get_flag(FLAG).flag.owner == "team-a"
