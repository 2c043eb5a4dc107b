"""The console's change requests page: pending requests with their diffs, approved
from the page by a second person; break-glass review items acknowledged there."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.service.principal import Principal
from flags.model import Role
from tests.console import conftest as console_fixtures
from tests.console.conftest import login

# The console's fixtures (an app with users of every role), used here by name.
clock = console_fixtures.clock
console_app = console_fixtures.console_app

ENV = "staging"
PATH = f"/admin/flags/checkout/environments/{ENV}"


def test_page__lists_diff__second_person_approves__applied(console_app: TestClient) -> None:
    """A token's raise waits; the page shows its diff; ed (another person) approves it
    from the page and it applies."""
    app = console_app.app  # type: ignore[attr-defined]
    store = app.state.store
    app.state.approvals.set_policy(Principal(None, "cli:test", Role.ADMIN), ENV, 1)
    _info, secret = store.create_token("bot", "editor", None, actor="test")
    held = console_app.patch(
        PATH, json={"rollout": 40}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert held.status_code == 202, held.text
    number = held.json()["id"]
    csrf = login(console_app, "ed")
    page = console_app.get("/console/change-requests")
    assert page.status_code == 200 and f'data-testid="change-request-{number}"' in page.text
    assert "<td>rollout</td><td>raises</td><td>10</td><td>40</td>" in page.text
    done = console_app.post(
        f"/console/change-requests/{number}/approve", data={"csrf": csrf}, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    assert store.get_state("checkout", ENV).rollout == 40
    assert "No change request is waiting." in console_app.get("/console/change-requests").text


def test_page__break_glass_review__acknowledged_by_another(console_app: TestClient) -> None:
    """A break-glass change is listed until a second person acknowledges it there."""
    app = console_app.app  # type: ignore[attr-defined]
    app.state.approvals.set_policy(Principal(None, "cli:test", Role.ADMIN), ENV, 1)
    _info, secret = app.state.store.create_token("root", "admin", None, actor="test")
    glass = console_app.patch(
        PATH + "?break_glass=true",
        json={"rollout": 90, "reason": "outage"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert glass.status_code == 200, glass.text
    [item] = app.state.approvals.requests.reviews()
    csrf = login(console_app, "ed")
    assert f'data-testid="review-{item.id}"' in console_app.get("/console/change-requests").text
    done = console_app.post(
        f"/console/reviews/{item.id}/acknowledge", data={"csrf": csrf}, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    assert app.state.approvals.requests.reviews() == []
