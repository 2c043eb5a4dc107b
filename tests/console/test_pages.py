"""The console's pages over HTTP (no browser): sessions, CSRF, roles, protected
environments, headers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from fastapi.testclient import TestClient

from .conftest import CSRF, PASSWORD, Clock


def test_console__no_session__redirects_to_login(console_app: TestClient) -> None:
    answer = console_app.get("/console/flags", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/console/login?next=")


def test_login__cookie_and_headers__strict(console_app: TestClient) -> None:
    page = console_app.get("/console/login")
    token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    answer = console_app.post(
        "/console/login",
        data={"username": "alice", "password": PASSWORD, "csrf": token},
        follow_redirects=False,
    )
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    assert "secure" not in cookie  # plain HTTP, no trusted proxy
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"


def test_login__wrong_password__401_then_throttled(console_app: TestClient) -> None:
    for _ in range(5):
        page = console_app.get("/console/login")
        token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
        answer = console_app.post(
            "/console/login", data={"username": "alice", "password": "wrong", "csrf": token}
        )
        assert answer.status_code == 401
    page = console_app.get("/console/login")
    token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    answer = console_app.post(
        "/console/login", data={"username": "alice", "password": PASSWORD, "csrf": token}
    )
    assert answer.status_code == 429


def test_login__without_form_token__refused(console_app: TestClient) -> None:
    answer = console_app.post("/console/login", data={"username": "alice", "password": PASSWORD})
    assert answer.status_code == 403


def test_post__without_csrf__403(console_app: TestClient, logged_in: Callable[[str], str]) -> None:
    logged_in("alice")
    answer = console_app.post(
        "/console/flags/checkout/environments/staging/kill", data={"reason": "x"}
    )
    assert answer.status_code == 403
    assert "CSRF" in answer.text


def test_reader__no_edit_controls__forged_post_403(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    csrf = logged_in("rita")
    page = console_app.get("/console/flags/checkout")
    assert page.status_code == 200
    assert 'data-testid="kill-' not in page.text and "Preview change" not in page.text
    answer = console_app.post(
        "/console/flags/checkout/environments/staging/kill", data={"reason": "x", "csrf": csrf}
    )
    assert answer.status_code == 403


def test_protected__change_needs_typed_name(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    csrf = logged_in("ed")
    form = {"csrf": csrf, "enabled": "on", "rollout": "30", "version": "0"}
    refused = console_app.post("/console/flags/checkout/environments/production", data=form)
    assert refused.status_code == 422 and "confirm" in refused.text
    done = console_app.post(
        "/console/flags/checkout/environments/production",
        data={**form, "confirm": "production"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    history = console_app.get("/console/history?flag=checkout&environment=production")
    assert "user:ed" in history.text and "rollout" in history.text
    earlier = console_app.get("/console/history?flag=checkout&until=2000-01-01T00:00:00Z")
    assert "user:ed" not in earlier.text
    bad = console_app.get("/console/history?since=yesterday-ish")
    assert bad.status_code == 422 and "since" in bad.text


def test_preview__shows_field_diff(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    csrf = logged_in("ed")
    page = console_app.post(
        "/console/flags/checkout/environments/staging/preview",
        data={"csrf": csrf, "enabled": "on", "rollout": "50"},
    )
    assert page.status_code == 200
    assert 'data-testid="diff"' in page.text
    assert ">10<" in page.text and ">50<" in page.text
    assert 'name="confirm"' not in page.text  # staging is not protected


def test_session__idle_past_timeout__ends(
    console_app: TestClient, logged_in: Callable[[str], str], clock: Clock
) -> None:
    logged_in("alice")
    clock.advance(timedelta(hours=7, minutes=59))
    assert console_app.get("/console/flags", follow_redirects=False).status_code == 200
    clock.advance(timedelta(hours=8, seconds=1))
    assert console_app.get("/console/flags", follow_redirects=False).status_code == 303


def test_logout__session_revoked(console_app: TestClient, logged_in: Callable[[str], str]) -> None:
    csrf = logged_in("alice")
    cookie = console_app.cookies.get("flagrail_session")
    out = console_app.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    console_app.cookies.set("flagrail_session", cookie, path="/console")  # a stolen copy
    assert console_app.get("/console/flags", follow_redirects=False).status_code == 303


def test_pages__every_page_renders(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    logged_in("alice")
    for path in (
        "/console/flags?q=check&state=partial",
        "/console/flags/checkout",
        "/console/history",
        "/console/health",
        "/console/plans?flag=checkout",
        "/console/admin",
    ):
        answer = console_app.get(path)
        assert answer.status_code == 200, (path, answer.text[:500])


def test_admin__create_token__value_shown_once(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    csrf = logged_in("alice")
    answer = console_app.post(
        "/console/admin/tokens", data={"csrf": csrf, "name": "ci", "role": "reader"}
    )
    assert answer.status_code == 201 and 'data-testid="new-token"' in answer.text
    assert 'data-testid="new-token"' not in console_app.get("/console/admin").text


def test_flags_grid__after_a_change__not_stale(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    """The grid's listing follows the history: kills, new, archived and searched flags,
    and a new environment all show on the next page view."""
    logged_in("alice")
    assert "killed" not in console_app.get("/console/flags?q=checkout").text.split("<tbody>")[1]
    store = console_app.app.state.store  # type: ignore[attr-defined]
    store.kill("checkout", ["staging"], reason="x", actor="test")
    body = console_app.get("/console/flags?q=checkout").text.split("<tbody>")[1]
    assert 'class="state killed"' in body
    store.create_flag("brand.new", description="Shiny Thing", actor="test")
    assert "brand.new" in console_app.get("/console/flags?q=shiny").text
    store.archive_flag("search.v2", actor="test")
    assert "search.v2" not in console_app.get("/console/flags").text
    store.create_environment("canary", actor="test")
    assert ">canary</th>" in console_app.get("/console/flags").text
    assert console_app.get("/console/flags?state=killed").text.count('data-testid="flag-row"') == 1


def test_admin_users_api__admin_creates_lists_disables__reader_403(
    console_app: TestClient,
) -> None:
    """``/admin/users`` with tokens: an unscoped admin manages users; others get 403."""
    store = console_app.app.state.store  # type: ignore[attr-defined]
    _info, admin = store.create_token("root", "admin", None, actor="test")
    _info, reader = store.create_token("ro", "reader", None, actor="test")
    _info, scoped = store.create_token("half", "admin", ["staging"], actor="test")
    as_admin = {"Authorization": f"Bearer {admin}"}
    body = {"name": "zoe", "password": PASSWORD, "role": "operator", "environments": ["staging"]}
    created = console_app.post("/admin/users", json=body, headers=as_admin)
    assert created.status_code == 201, created.text
    assert created.json()["actor"] == "user:zoe" and "password" not in created.json()
    again = console_app.post("/admin/users", json=body, headers=as_admin)
    assert again.status_code == 409
    bad = console_app.post("/admin/users", json={**body, "name": "x", "password": "short"},
                           headers=as_admin)  # fmt: skip
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "password"
    names = [u["name"] for u in console_app.get("/admin/users", headers=as_admin).json()["items"]]
    assert "zoe" in names
    for token in (reader, scoped):
        headers = {"Authorization": f"Bearer {token}"}
        assert console_app.get("/admin/users", headers=headers).status_code == 403
    disabled = console_app.post("/admin/users/zoe/disable", headers=as_admin)
    assert disabled.status_code == 200 and disabled.json()["disabled"] is True
    assert console_app.post("/admin/users/nobody/disable", headers=as_admin).status_code == 404
