"""The console over approvals (#16): the nav link to the change requests page, and a
change held for approval lands there with a notice instead of an error page."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from flags.store.change_requests import Policy


def test_nav__every_page__links_change_requests(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    """The base template's nav links the change requests page."""
    logged_in("ed")
    page = console_app.get("/console/flags")
    assert 'href="/console/change-requests"' in page.text


def test_save__environment_needs_approval__redirects_with_pending_notice(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    """Saving into a gated environment is held: 303 to the change requests page, which
    says "pending approval: change request N" and lists request N; nothing applied."""
    # Given staging needs one approval
    app = console_app.app
    app.state.approvals.requests.set_policy(Policy("staging", 1, False), actor="test")  # type: ignore[attr-defined]
    before = app.state.store.get_flag("checkout").states["staging"]  # type: ignore[attr-defined]
    csrf = logged_in("ed")
    # When ed saves a rollout change from the flag form
    form = {"csrf": csrf, "enabled": "on", "rollout": "55", "version": str(before.version)}
    held = console_app.post(
        "/console/flags/checkout/environments/staging", data=form, follow_redirects=False
    )
    # Then the answer is a redirect to the requests page naming the request
    assert held.status_code == 303, held.text
    target = held.headers["location"]
    assert target.startswith("/console/change-requests?pending=")
    number = int(target.rsplit("=", 1)[1])
    page = console_app.get(target)
    assert page.status_code == 200
    assert f"pending approval: change request {number}" in page.text
    assert f'data-testid="change-request-{number}"' in page.text
    after = app.state.store.get_flag("checkout").states["staging"]  # type: ignore[attr-defined]
    assert after.rollout == before.rollout


def test_change_requests__pending_not_numbers__no_notice(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    """A ``pending`` that is not request numbers shows no notice (and no error)."""
    logged_in("ed")
    page = console_app.get("/console/change-requests?pending=<b>x</b>")
    assert page.status_code == 200 and "pending approval" not in page.text
