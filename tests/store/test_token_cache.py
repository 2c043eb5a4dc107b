"""The token cache: live tokens only, bounded life, and no revocation outlives it.

Store-level tests run on SQLite and PostgreSQL; database reads are counted with a
SQLAlchemy event on the real engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from argon2 import PasswordHasher
from sqlalchemy import event

from flags.model import Role, TokenInfo
from flags.store.sql import SqlFlagStore
from flags.store.token_cache import TokenCache, TokenMarkWatch
from flags.store.users import UserStore

FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _token(name: str = "t", revoked: bool = False) -> TokenInfo:
    return TokenInfo(name, name, Role.CLIENT, None, datetime.now(UTC), revoked)


def test_cache__entry__served_until_its_ttl_then_gone() -> None:
    clock = Clock()
    cache = TokenCache(10, clock=clock)
    cache.put("d", _token(), cache.generation())
    held = cache.get("d")
    assert held is not None and held.name == "t"
    clock.now += 9.9
    assert cache.get("d") is not None
    clock.now += 0.2
    assert cache.get("d") is None


def test_cache__put_after_a_clear__dropped() -> None:
    """An authentication that read the database before a revocation's clear cannot
    store its stale answer after it."""
    cache = TokenCache(10)
    generation = cache.generation()
    cache.clear()
    cache.put("d", _token(), generation)
    assert cache.get("d") is None
    cache.put("d", _token(), cache.generation())
    assert cache.get("d") is not None


def test_cache__revoked_token_or_zero_ttl__never_held() -> None:
    cache = TokenCache(10)
    cache.put("d", _token(revoked=True), cache.generation())
    assert cache.get("d") is None
    off = TokenCache(0)
    off.put("d", _token(), off.generation())
    assert off.get("d") is None


def test_cache__over_max_entries__bounded() -> None:
    cache = TokenCache(10, max_entries=100)
    for i in range(1000):
        cache.put(f"d{i}", _token(f"t{i}"), cache.generation())
        assert len(cache) <= 100
    assert cache.get("d999") is not None


def test_watch__mark_moves__cleared_unreadable_mark__cleared() -> None:
    cache = TokenCache(10)
    marks = iter([1, 1, 2])
    watch = TokenMarkWatch(cache, lambda: next(marks))
    watch.check()  # the first mark
    cache.put("d", _token(), cache.generation())
    watch.check()  # unchanged
    assert cache.get("d") is not None
    watch.check()  # moved
    assert cache.get("d") is None

    cache.put("d", _token(), cache.generation())

    def broken() -> int:
        raise RuntimeError("database away")

    TokenMarkWatch(cache, broken).check()  # never raises
    assert cache.get("d") is None


@pytest.fixture
def store(database_url: str) -> Iterator[SqlFlagStore]:
    s = SqlFlagStore(database_url)
    try:
        yield s
    finally:
        s.close()


def _count_statements(store: SqlFlagStore) -> list[str]:
    """The statements that read the tokens table from now on (connection set-up
    statements, such as SQLite's pragmas, are not counted)."""
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if "FROM tokens" in statement:
            seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    return seen


def test_authenticate__second_call__no_database_read(store: SqlFlagStore) -> None:
    info, secret = store.create_token("app", "client", None, actor="test")
    statements = _count_statements(store)
    assert store.authenticate(secret) == info
    read = len(statements)
    assert read >= 1
    assert store.authenticate(secret) == info
    assert store.cached_token(secret) == info
    assert len(statements) == read == 1
    # unknown secrets are read every time (a token minted elsewhere works at once)
    assert store.authenticate("nope") is None
    assert store.authenticate("nope") is None
    assert len(statements) == read + 2


def test_revoke__through_this_store__refused_at_once(store: SqlFlagStore) -> None:
    info, secret = store.create_token("app", "client", None, actor="test")
    assert store.authenticate(secret) == info
    store.revoke_token(info.id, actor="test")
    assert store.cached_token(secret) is None
    assert store.authenticate(secret) is None


def test_revoke__through_another_store__refused_once_the_mark_is_read(
    store: SqlFlagStore, database_url: str
) -> None:
    """Another process (here: another engine) revokes; this store's cache holds the
    token until its mark watch reads the history, then refuses it."""
    info, secret = store.create_token("app", "client", None, actor="test")
    watch = TokenMarkWatch(store.tokens, store.revocation_mark)
    watch.check()
    assert store.authenticate(secret) == info
    other = SqlFlagStore(database_url)
    try:
        assert other.tokens is not store.tokens
        other.revoke_token(info.id, actor="elsewhere")
    finally:
        other.close()
    assert store.authenticate(secret) == info  # not seen yet: the documented window
    watch.check()
    assert store.authenticate(secret) is None


def test_user_disabled__through_the_users_store__token_refused_at_once(
    store: SqlFlagStore,
) -> None:
    if "staging" not in {e.name for e in store.list_environments()}:
        store.create_environment("staging", actor="test")
    users = UserStore(store.engine, hasher=FAST_HASHER)
    users.create_user("sam", PASSWORD, "operator", ["staging"], actor="test")
    info, secret = store.create_token("sam-cli", "reader", ["staging"], actor="t", user="sam")
    assert store.authenticate(secret) == info
    mark = store.revocation_mark()
    users.set_disabled("sam", actor="test")
    assert store.authenticate(secret) is None
    assert store.revocation_mark() > mark
