"""The console in a real Chromium (Playwright), against a real ``flagrail serve``
process and real SDK processes (``tests/sdk/worker.py``).

Chromium is Debian's (``/usr/bin/chromium``); without it these tests skip, and under
``CI=true`` they fail. Screenshots of every page at 1280 px and 390 px, light and
dark, go to ``$FLAGRAIL_CONSOLE_SCREENSHOTS`` (``docs/console`` to refresh the docs'
images), else to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sdk.harness import Worker
from sqlalchemy import update

from flags.store.sql import SqlFlagStore
from flags.store.users import UserStore, sessions
from flags.testing import wait_for
from flags.testing.redis_server import free_port

from .conftest import FAST_HASHER, PASSWORD, seed

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
WIDTHS = {"wide": (1280, 800), "narrow": (390, 844)}


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Served:
    """``flagrail serve`` on a free port, on a seeded SQLite database of its own."""

    def __init__(self, database_url: str, tmp: Path) -> None:
        self.database_url = database_url
        self.store = SqlFlagStore(database_url)
        self.users = UserStore(self.store.engine, hasher=FAST_HASHER)
        self.users.start()
        seed(self.users, self.store)
        _info, self.client_token = self.store.create_token(
            "sdk", "client", ["production"], actor="test"
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "FLAGRAIL_BOOTSTRAP_TOKEN_FILE": str(tmp / "token"),
            "FLAGRAIL_HEARTBEAT_INTERVAL": "0.5",
            "FLAGRAIL_SCHEDULER": "false",
        }
        flagrail = Path(sys.executable).with_name("flagrail")
        self.log = (tmp / "serve.log").open("w")
        self.proc = subprocess.Popen(
            [str(flagrail), "serve", "--port", str(self.port), "--database-url", database_url],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_for(self._healthy, 30, "flagrail serve's /healthz")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"flagrail serve exited {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def expire_sessions(self) -> None:
        """Every session last seen 9 hours ago (past the 8 h idle timeout)."""
        with self.store.engine.begin() as conn:
            conn.execute(
                update(sessions).values(last_seen_at=datetime.now(UTC) - timedelta(hours=9))
            )

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()
        self.store.close()


@pytest.fixture(scope="module")
def served(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("console")
    path = tmp / "flagrail.db"
    shutil.copyfile(sqlite_template, path)
    s = Served(f"sqlite:///{path}", tmp)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(executable), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page_as(browser: Any, served: Served) -> Iterator[Callable[..., Any]]:
    contexts: list[Any] = []

    def open_page(name: str | None, *, width: str = "wide", scheme: str = "light") -> Any:
        w, h = WIDTHS[width]
        context = browser.new_context(viewport={"width": w, "height": h}, color_scheme=scheme)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        if name is not None:
            log_in(page, served, name)
        return page

    try:
        yield open_page
    finally:
        for c in contexts:
            c.close()


def log_in(page: Any, served: Served, name: str) -> None:
    page.goto(f"{served.url}/console/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/console/flags")


def test_login_and_search(page_as: Callable[..., Any], served: Served) -> None:
    """Log in; "/" focuses the search; a search narrows the grid."""
    page = page_as("alice")
    assert page.locator("[data-testid=flag-row]").count() == 3
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.name") == "q"
    page.keyboard.type("search")
    page.keyboard.press("Enter")
    page.wait_for_url("**q=search*")
    rows = page.locator("[data-testid=flag-row]")
    assert rows.count() == 1 and "search.v2" in rows.inner_text()


def test_staging_rollout__diff_shown_then_saved(
    page_as: Callable[..., Any], served: Served
) -> None:
    page = page_as("ed")
    page.goto(f"{served.url}/console/flags/search.v2")
    page.click("#env-staging summary")
    page.fill("#rollout-staging", "40")
    page.click("[data-testid=edit-staging] button[type=submit]")
    diff = page.locator("[data-testid=diff]")
    assert "rollout" in diff.inner_text() and "40" in diff.inner_text()
    assert page.locator("input[name=confirm]").count() == 0
    page.click("[data-testid=save]")
    page.wait_for_url("**/console/flags/search.v2*")
    assert "40%" in page.locator("#env-staging").inner_text()


def test_production_change__refused_without_typed_name(
    page_as: Callable[..., Any], served: Served
) -> None:
    page = page_as("ed")
    page.goto(f"{served.url}/console/flags/search.v2")
    page.click("#env-production summary")
    page.check("#env-production input[name=enabled]")
    page.fill("#rollout-production", "5")
    page.click("[data-testid=edit-production] button[type=submit]")
    page.fill("input[name=confirm]", "prod")  # not the name
    page.click("[data-testid=save]")
    assert "type its name" in page.locator("[data-testid=error]").inner_text()
    assert served.store.get_state("search.v2", "production").rollout == 0
    assert "rollout" in page.locator("[data-testid=diff]").inner_text()  # the preview again
    page.fill("input[name=confirm]", "production")
    page.click("[data-testid=save]")
    page.wait_for_url("**/console/flags/search.v2*")
    assert served.store.get_state("search.v2", "production").rollout == 5


def test_kill_production__applied_in_3_of_3_live(
    page_as: Callable[..., Any], served: Served
) -> None:
    """Three real SDK processes report; the kill's line counts them without a reload."""
    workers = [
        Worker(
            [
                "--url",
                served.url,
                "--token",
                served.client_token,
                "--flag",
                "checkout",
                "--metrics",
                "1",
            ]
        )
        for _ in range(3)
    ]
    try:
        for w in workers:
            w.wait_for(lambda s: s.get("event") == "started", timeout=30)
        page = page_as("olga")
        page.goto(f"{served.url}/console/flags/checkout")
        page.fill("#reason-production", "incident 42")
        page.click("[data-testid=kill-production]")
        page.wait_for_url("**kill=production*")
        line = page.locator("[data-testid=applied-production]")
        line.get_by_text("applied in 3 of 3 processes").wait_for(timeout=30_000)
        for w in workers:
            w.wait_for(lambda s: s.get("killed") is True, timeout=15)
        assert page.locator("#env-production .state").inner_text() == "killed"
    finally:
        for w in workers:
            w.stop()
    history = page_as("alice")
    history.goto(f"{served.url}/console/history?flag=checkout&action=kill")
    row = history.locator("[data-testid=history-row]").first
    text = row.inner_text()
    assert "user:olga" in text and "incident 42" in text
    assert "killed" in text and "true" in text  # the field-level diff


def test_reader__no_edit_controls__forged_post_403(
    page_as: Callable[..., Any], served: Served
) -> None:
    page = page_as("rita")
    page.goto(f"{served.url}/console/flags/checkout")
    assert page.locator("[data-testid^=kill-]").count() == 0
    assert page.locator("details.edit").count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    answer = page.request.post(
        f"{served.url}/console/flags/checkout/environments/staging/kill",
        form={"csrf": csrf, "reason": "forged"},
    )
    assert answer.status == 403


def test_form_without_csrf__refused(page_as: Callable[..., Any], served: Served) -> None:
    page = page_as("alice")
    answer = page.request.post(
        f"{served.url}/console/flags/checkout/environments/staging/kill",
        form={"reason": "no token"},
    )
    assert answer.status == 403
    assert not served.store.get_state("checkout", "staging").killed


def test_admin__token_for_a_user__stops_while_the_user_is_disabled(
    page_as: Callable[..., Any], served: Served
) -> None:
    """The Admin page issues a token to olga; disabling her there makes it answer 401,
    enabling her brings it back."""
    page = page_as("alice")
    page.goto(f"{served.url}/console/admin")
    tokens = page.locator("#tokens")
    tokens.locator("input[name=name]").fill("olga-bot")
    tokens.locator("select[name=role]").select_option("reader")
    tokens.locator("select[name=user]").select_option("olga")
    tokens.locator("button[type=submit]", has_text="Create token").click()
    value = page.locator("[data-testid=new-token]").inner_text()
    assert page.locator("#tokens tr", has_text="olga-bot").locator("td", has_text="olga").count()

    def answer() -> int:
        headers = {"Authorization": f"Bearer {value}"}
        return httpx.get(f"{served.url}/admin/flags", headers=headers, timeout=10).status_code

    assert answer() == 200
    page.goto(f"{served.url}/console/admin")
    page.locator("#users tr", has_text="olga").locator("button", has_text="Disable").click()
    page.wait_for_url("**/console/admin*")
    assert answer() == 401
    page.locator("#users tr", has_text="olga").locator("button", has_text="Enable").click()
    page.wait_for_url("**/console/admin*")
    assert answer() == 200


def test_logout_and_expiry(page_as: Callable[..., Any], served: Served) -> None:
    page = page_as("alice")
    page.click("text=Log out")
    page.wait_for_url("**/console/login")
    page.goto(f"{served.url}/console/flags")
    assert "/console/login" in page.url
    log_in(page, served, "alice")
    served.expire_sessions()
    page.goto(f"{served.url}/console/history")
    assert "/console/login" in page.url


PAGES = {
    "login": None,
    "flags": "/console/flags",
    "flag": "/console/flags/checkout",
    "history": "/console/history",
    "health": "/console/health",
    "plans": "/console/plans",
    "admin": "/console/admin",
}


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", ["wide", "narrow"])
def test_screenshots(
    page_as: Callable[..., Any], served: Served, width: str, scheme: str, tmp_path: Path
) -> None:
    """Every page renders at both widths in both schemes, without horizontal page
    scroll at 390 px; the images go to the docs when asked."""
    out = Path(os.environ.get("FLAGRAIL_CONSOLE_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    for name, path in PAGES.items():
        page = page_as(None if path is None else "alice", width=width, scheme=scheme)
        if path is None:
            page.goto(f"{served.url}/console/login")
        else:
            page.goto(f"{served.url}{path}")
        assert page.locator("main").count() == 1
        overflow = page.evaluate("document.body.scrollWidth - window.innerWidth")
        assert overflow <= 0, (name, width, overflow)
        target = out / f"{name}-{width}-{scheme}.png"
        page.screenshot(path=str(target))
        _shrink(target)


def _shrink(path: Path) -> None:
    """A palette PNG: the screenshots stay small enough to commit."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)
