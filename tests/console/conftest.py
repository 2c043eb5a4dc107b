"""Console fixtures: an app with users of every role, and a logged-in HTTP client."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from api.app import create_app
from flags.model import StateChange
from flags.settings import Settings
from flags.store.users import UserStore

PASSWORD = "correct horse battery"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Clock:
    """A settable UTC clock for session expiry."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def seed(users: UserStore, store: object) -> None:
    """Users alice (admin), ed (editor), olga (operator), rita (reader); flags in
    staging and production."""
    people = (("alice", "admin"), ("ed", "editor"), ("olga", "operator"), ("rita", "reader"))
    for name, role in people:
        users.create_user(name, PASSWORD, role, actor="test")
    envs = {e.name for e in store.list_environments()}  # type: ignore[attr-defined]
    for env in ("staging", "production"):
        if env not in envs:
            store.create_environment(env, actor="test")  # type: ignore[attr-defined]
    for key in ("checkout", "search.v2", "payments.cache.l2"):
        store.create_flag(key, actor="test", owner="team-a", tags=("web",))  # type: ignore[attr-defined]
        store.update_state(  # type: ignore[attr-defined]
            key, "staging", StateChange(enabled=True, rollout=10), actor="test"
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def console_app(sqlite_url: str, clock: Clock) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=sqlite_url, scheduler=False))
    with TestClient(app) as client:
        users: UserStore = app.state.console_users
        users.clock = clock
        users.hasher = FAST_HASHER  # still argon2id; cheap parameters keep tests quick
        seed(users, app.state.store)
        yield client


def login(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Log ``name`` in on ``client``; returns the session's CSRF token."""
    page = client.get("/console/login")
    token = CSRF.search(page.text).group(1)  # type: ignore[union-attr]
    answer = client.post(
        "/console/login",
        data={"username": name, "password": password, "csrf": token},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    flags = client.get("/console/flags")
    return CSRF.search(flags.text).group(1)  # type: ignore[union-attr]


@pytest.fixture
def logged_in(console_app: TestClient) -> Callable[[str], str]:
    return lambda name: login(console_app, name)
