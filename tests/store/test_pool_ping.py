"""PostgreSQL pool: a connection is pinged before use only after ``ping_idle`` seconds
idle (``flags.store.sql.make_engine``), so a busy server skips a round trip per
transaction; a dead connection is found by the ping, or fails one request and is
replaced with the rest of the pool."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from flags.errors import StoreUnavailableError
from flags.store.sql import SqlFlagStore, make_engine

pytestmark = pytest.mark.postgres


def _store(url: str, ping_idle: float) -> tuple[SqlFlagStore, list[int]]:
    engine = make_engine(url, ping_idle=ping_idle)
    pings = [0]
    ping = engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings[0] += 1
        return ping(dbapi_conn)

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    store = SqlFlagStore(url, engine=engine)
    store.create_flag("checkout", actor="test")
    return store, pings


def _terminate_connections(url: str) -> int:
    """Kill the server side of every connection to ``url``'s database (ours alone)."""
    database = url.rsplit("/", 1)[1]
    with psycopg.connect(
        host="127.0.0.1", user="postgres", dbname="test", autocommit=True
    ) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


def _toggle(store: SqlFlagStore, i: int) -> None:
    kill = store.kill if i % 2 == 0 else store.unkill
    kill("checkout", ["production"], reason="ping test", actor="test")


@pytest.fixture
def url(postgres_url: str) -> Iterator[str]:
    yield postgres_url


def test_busy_pool__no_ping_per_transaction(url: str) -> None:
    store, pings = _store(url, ping_idle=60)
    try:
        for i in range(40):
            _toggle(store, i)
        # Only connections new to the pool were pinged, not each of the 40 checkouts.
        assert 1 <= pings[0] <= store.engine.pool.checkedin() + 1
    finally:
        store.close()


def test_connection_killed_while_busy__one_request_fails_then_the_pool_recovers(
    url: str,
) -> None:
    store, _pings = _store(url, ping_idle=60)
    try:
        _toggle(store, 0)
        assert _terminate_connections(url) >= 1
        with pytest.raises(StoreUnavailableError):
            _toggle(store, 1)
        _toggle(store, 1)  # a new connection: the pool dropped the dead ones
        assert store.get_state("checkout", "production").killed is False
    finally:
        store.close()


def test_connection_killed_while_idle__the_ping_finds_it_and_nothing_fails(url: str) -> None:
    store, pings = _store(url, ping_idle=0)  # every checkout counts as idle
    try:
        _toggle(store, 0)
        before = pings[0]
        assert _terminate_connections(url) >= 1
        _toggle(store, 1)
        assert pings[0] > before
        assert store.get_state("checkout", "production").killed is False
    finally:
        store.close()


def test_setting__ping_idle_zero__the_server_pings_at_every_checkout(url: str) -> None:
    """``FLAGRAIL_DB_PING_IDLE=0`` (``Settings.db_ping_idle``) reaches the server's pool:
    each transaction's checkout pings, as SQLAlchemy's pre-ping does."""
    from api.app import create_app
    from flags.settings import Settings

    app = create_app(Settings(database_url=url, db_ping_idle=0, scheduler=False))
    store = app.state.store
    pings = [0]
    ping = store.engine.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings[0] += 1
        return ping(dbapi_conn)

    store.engine.dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        store.create_flag("checkout", actor="test")
        for i in range(4):
            _toggle(store, i)
        assert pings[0] >= 5
    finally:
        store.close()
