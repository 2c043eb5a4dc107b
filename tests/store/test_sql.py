"""SqlFlagStore on SQLite and PostgreSQL: history atomic with every mutation, append-only
history, optimistic concurrency, kills, tokens, and an unreachable database."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

import flags.store.history
from flags.errors import (
    AlreadyExistsError,
    ConflictError,
    EnvironmentNotFoundError,
    FlagNotFoundError,
    StoreUnavailableError,
    TokenNotFoundError,
    ValidationError,
    VersionConflictError,
)
from flags.history import HistoryQuery
from flags.model import FlagChanged, FlagState, StateChange
from flags.store import tables as t
from flags.store.sql import SqlFlagStore, hash_token
from flags.testing.redis_server import free_port

ENVS = ["beta", "development", "production", "staging"]
TABLES = (t.environments, t.flags, t.flag_states, t.history, t.tokens)


@pytest.fixture
def store(database_url: str) -> Iterator[SqlFlagStore]:
    s = SqlFlagStore(database_url)
    try:
        yield s
    finally:
        s.close()


def dump(store: SqlFlagStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every flagrail table, in a comparable form."""
    with store.engine.connect() as conn:
        return {
            table.name: sorted(
                (tuple(str(v) for v in row) for row in conn.execute(select(table))), key=str
            )
            for table in TABLES
        }


def history_rows(store: SqlFlagStore, **filters: Any) -> list[Any]:
    return store.list_history(HistoryQuery(limit=500, **filters)).items


def seed(store: SqlFlagStore) -> dict[str, Any]:
    """A flag enabled in production, a second flag, and a token: something to change."""
    store.create_flag("auth.cache.l2", actor="seed")
    store.create_flag("billing.v2", actor="seed")
    store.update_state(
        "auth.cache.l2", "production", StateChange(enabled=True, rollout=10), actor="seed"
    )
    info, _secret = store.create_token("ops", "operator", None, actor="seed")
    return {"token_id": info.id}


# Each mutation, with the history rows it must write: (action, flag, environment) each.
MUTATIONS: dict[str, tuple[Callable[[SqlFlagStore, dict[str, Any]], Any], list[tuple]]] = {
    "flag.create": (
        lambda s, _: s.create_flag("new.flag", description="d", actor="alice"),
        [("flag.create", "new.flag", None)],
    ),
    "flag.update": (
        lambda s, _: s.update_flag("billing.v2", {"owner": "team-b"}, actor="alice"),
        [("flag.update", "billing.v2", None)],
    ),
    "flag.archive": (
        lambda s, _: s.archive_flag("billing.v2", actor="alice"),
        [("flag.archive", "billing.v2", None)],
    ),
    "state.update": (
        lambda s, _: s.update_state(
            "auth.cache.l2", "production", StateChange(rollout=50), actor="alice"
        ),
        [("state.update", "auth.cache.l2", "production")],
    ),
    "kill": (
        lambda s, _: s.kill("auth.cache.l2", None, reason="storm", actor="alice"),
        [("kill", "auth.cache.l2", env) for env in ENVS],
    ),
    "unkill": (
        lambda s, _: s.unkill("auth.cache.l2", ["beta"], reason="calm", actor="alice"),
        [("unkill", "auth.cache.l2", "beta")],
    ),
    "environment.create": (
        lambda s, _: s.create_environment("qa", actor="alice"),
        [("environment.create", None, "qa")],
    ),
    "token.create": (
        lambda s, _: s.create_token("ci", "reader", ["beta"], actor="alice"),
        [("token.create", None, None)],
    ),
    "token.revoke": (
        lambda s, seeded: s.revoke_token(seeded["token_id"], actor="alice"),
        [("token.revoke", None, None)],
    ),
}


def _prepare(store: SqlFlagStore, name: str) -> dict[str, Any]:
    seeded = seed(store)
    if name == "unkill":
        store.kill("auth.cache.l2", ["beta"], reason="storm", actor="seed")
    return seeded


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutation__commits__writes_its_history_rows(store: SqlFlagStore, name: str) -> None:
    """Every mutation writes one history row per flag and environment it touched."""
    seeded = _prepare(store, name)
    last = history_rows(store)[0].id
    run, expected = MUTATIONS[name]
    # When: the mutation runs
    run(store, seeded)
    # Then: exactly its rows were appended, by its actor, newest first
    new = [e for e in history_rows(store) if e.id > last]
    assert sorted((e.action, e.flag, e.environment) for e in new) == sorted(expected)
    assert {e.actor for e in new} == {"alice"}
    assert all(e.at.tzinfo is not None for e in new)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutation__history_write_fails__nothing_written(
    store: SqlFlagStore, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure between the change and its history row leaves neither behind."""
    seeded = _prepare(store, name)
    before = dump(store)
    published: list[Any] = []
    store.listeners.append(published.append)

    def broken_record_changes(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("injected: history write failed")

    # Every history write goes through record_changes (record_change calls it).
    monkeypatch.setattr(flags.store.history, "record_changes", broken_record_changes)
    run, _expected = MUTATIONS[name]
    # When: the history write fails
    with pytest.raises(RuntimeError, match="injected"):
        run(store, seeded)
    # Then: the database is exactly as before, and no change was announced
    assert dump(store) == before
    assert published == []


def test_kill__history_write_fails__every_environment_rolled_back(
    store: SqlFlagStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill over four environments is one transaction: its four state changes are made
    before its four history rows, and a failure writing those undoes all of them."""
    seed(store)
    before = dump(store)
    written: list[list[Any]] = []

    def fail_after_changes(conn: Any, rows: Any) -> None:
        killed = conn.execute(select(t.flag_states.c.killed)).scalars().all()
        written.append([list(rows), killed])
        raise RuntimeError("injected after the state changes")

    monkeypatch.setattr(flags.store.history, "record_changes", fail_after_changes)
    with pytest.raises(RuntimeError, match="injected"):
        store.kill("auth.cache.l2", None, reason="storm", actor="alice")
    ((rows, killed_inside),) = written
    assert sorted(r["environment"] for r in rows) == ENVS
    assert killed_inside.count(True) == 4  # the changes were there, inside the transaction
    assert dump(store) == before


def test_history__update_or_delete__refused_by_the_database(store: SqlFlagStore) -> None:
    """The history is append-only in the database itself: UPDATE and DELETE fail."""
    seed(store)
    before = dump(store)["history"]
    for statement in ("UPDATE history SET actor = 'mallory'", "DELETE FROM history"):
        with pytest.raises(DBAPIError), store.engine.begin() as conn:
            conn.execute(text(statement))
    assert dump(store)["history"] == before


def test_history_row__state_change__records_before_after_reason_request_id(
    store: SqlFlagStore,
) -> None:
    """A state change's row holds the state before and after, the reason and the request id."""
    store.create_flag("auth.cache.l2", actor="seed")
    store.update_state(
        "auth.cache.l2",
        "beta",
        StateChange(enabled=True, tenants_on_add=frozenset({"acme"})),
        actor="alice",
        reason="pilot",
        request_id="req-1",
    )
    entry = history_rows(store, flag="auth.cache.l2", action="state.update")[0]
    assert entry.before == FlagState().to_dict()
    assert entry.after["enabled"] is True
    assert entry.after["tenants_on"] == ["acme"]
    assert entry.after["version"] == 1
    assert (entry.reason, entry.request_id, entry.environment) == ("pilot", "req-1", "beta")


def test_list_history__time_filters_with_skewed_rows__exact(store: SqlFlagStore) -> None:
    """since/until select exactly the rows stamped in range, also rows written out of time
    order (a transaction that took its time), walking pages one row at a time."""
    base = datetime(2030, 1, 1, tzinfo=UTC)
    offsets = [-3600, -1200, 1, -2, 300, -30, 400, 0]  # insertion order; -2, -30, 0 skewed
    with store.engine.begin() as conn:
        for i, seconds in enumerate(offsets):
            flags.store.history.record_change(
                conn,
                actor="t",
                action="state.update",
                flag=f"f.{i}",
                at=base + timedelta(seconds=seconds),
            )

    def walk(**filters: Any) -> list[str]:
        seen, cursor = [], None
        for _ in range(20):
            page = store.list_history(HistoryQuery(limit=1, cursor=cursor, **filters))
            seen += [e.flag for e in page.items]
            cursor = page.next_cursor
            if cursor is None:
                return seen
        raise AssertionError("pagination did not end")

    assert walk(since=base) == ["f.7", "f.6", "f.4", "f.2"]
    assert walk(until=base) == ["f.5", "f.3", "f.1", "f.0"]
    assert walk(since=base - timedelta(seconds=30), until=base + timedelta(seconds=2)) == [
        "f.7",
        "f.5",
        "f.3",
        "f.2",
    ]
    assert walk(since=base + timedelta(hours=2)) == []
    assert walk(until=base - timedelta(hours=2)) == []
    far = datetime(1, 1, 1, 0, 1, tzinfo=UTC)  # a bound within AT_SKEW of year 1
    assert walk(since=far) == [f"f.{i}" for i in range(7, -1, -1)]


class TestUpdateState:
    def test_update_state__each_change__version_grows_by_one(self, store: SqlFlagStore) -> None:
        """Every effective change bumps the state version by one; a no-op writes nothing."""
        store.create_flag("a.b", actor="t")
        s1 = store.update_state("a.b", "beta", StateChange(enabled=True), actor="t")
        s2 = store.update_state("a.b", "beta", StateChange(rollout=30), actor="t")
        rows = len(history_rows(store))
        same = store.update_state("a.b", "beta", StateChange(rollout=30), actor="t")
        assert (s1.version, s2.version, same.version) == (1, 2, 2)
        assert len(history_rows(store)) == rows

    def test_update_state__stale_expected_version__conflict_and_nothing_written(
        self, store: SqlFlagStore
    ) -> None:
        """A stale expected version raises with the current state and writes nothing."""
        store.create_flag("a.b", actor="t")
        store.update_state("a.b", "beta", StateChange(enabled=True), actor="t")
        before = dump(store)
        with pytest.raises(VersionConflictError) as info:
            store.update_state(
                "a.b", "beta", StateChange(rollout=90), actor="t", expected_version=0
            )
        assert info.value.current["version"] == 1
        assert info.value.current["enabled"] is True
        assert dump(store) == before
        ok = store.update_state(
            "a.b", "beta", StateChange(rollout=90), actor="t", expected_version=1
        )
        assert (ok.rollout, ok.version) == (90, 2)

    def test_update_state__archived_flag__conflict(self, store: SqlFlagStore) -> None:
        """An archived flag's state cannot be changed."""
        store.create_flag("a.b", actor="t")
        store.archive_flag("a.b", actor="t")
        with pytest.raises(ConflictError):
            store.update_state("a.b", "beta", StateChange(enabled=True), actor="t")

    def test_update_state__unknown_flag_or_environment__not_found(
        self, store: SqlFlagStore
    ) -> None:
        """Unknown flag or environment: the matching not-found error."""
        store.create_flag("a.b", actor="t")
        with pytest.raises(FlagNotFoundError):
            store.update_state("x.y", "beta", StateChange(enabled=True), actor="t")
        with pytest.raises(EnvironmentNotFoundError):
            store.update_state("a.b", "nowhere", StateChange(enabled=True), actor="t")


THREADS = 20


def _run_threads(target: Callable[[int], None]) -> list[BaseException]:
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as exc:  # collected and asserted on by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hung"
    return errors


def test_update_state__twenty_threads_at_once__no_update_lost(store: SqlFlagStore) -> None:
    """Twenty concurrent unconditional changes of one state all land: version 20, 20 tenants."""
    store.create_flag("a.b", actor="t")
    errors = _run_threads(
        lambda i: store.update_state(
            "a.b", "production", StateChange(tenants_on_add=frozenset({f"t{i}"})), actor=f"w{i}"
        )
    )
    assert errors == []
    state = store.get_state("a.b", "production")
    assert state.tenants_on == {f"t{i}" for i in range(THREADS)}
    assert state.version == THREADS
    assert len(history_rows(store, flag="a.b", action="state.update")) == THREADS


def test_kill_unkill_and_updates__twenty_threads_at_once__one_history_chain(
    store: SqlFlagStore,
) -> None:
    """Kills, unkills and state changes of one state at once (on PostgreSQL the kill
    locks, writes and bumps in one statement): every change that happened is one
    history row, the rows chain version to version, the environment's versions are
    distinct, and the final state is the last row's."""
    store.create_flag("a.b", actor="t")
    env_before = store.get_environment("production").version

    def change(i: int) -> None:
        if i % 3 == 0:
            store.kill("a.b", ["production"], reason=f"k{i}", actor=f"w{i}")
        elif i % 3 == 1:
            store.unkill("a.b", None, reason=f"u{i}", actor=f"w{i}")
        else:
            change = StateChange(tenants_on_add=frozenset({f"t{i}"}))
            store.update_state("a.b", "production", change, actor=f"w{i}")

    assert _run_threads(change) == []
    rows = [
        r
        for r in history_rows(store, flag="a.b", environment="production")
        if r.action in ("kill", "unkill", "state.update")
    ]
    rows.sort(key=lambda r: r.after["version"])
    assert [r.before["version"] for r in rows] == list(range(len(rows)))
    assert [r.after["version"] for r in rows] == list(range(1, len(rows) + 1))
    for earlier, later in itertools.pairwise(rows):
        assert later.before == earlier.after  # nothing happened in between unrecorded
    assert [r.id for r in rows] == sorted(r.id for r in rows)  # committed in order
    # Each change bumped the environment once: no version drawn twice, none lost.
    assert store.get_environment("production").version == env_before + len(rows)
    state = store.get_state("a.b", "production")
    assert state.to_dict() == rows[-1].after
    assert state.tenants_on == {f"t{i}" for i in range(THREADS) if i % 3 == 2}


def test_update_state__twenty_threads_with_if_match_retries__no_update_lost(
    store: SqlFlagStore,
) -> None:
    """Twenty read-modify-write clients retrying on 409 all land, none overwriting another."""
    store.create_flag("a.b", actor="t")
    conflicts: list[int] = []

    def read_modify_write(i: int) -> None:
        for _attempt in range(500):
            current = store.get_state("a.b", "production")
            change = StateChange(tenants_on=current.tenants_on | {f"t{i}"})
            try:
                store.update_state(
                    "a.b", "production", change, actor=f"w{i}", expected_version=current.version
                )
                return
            except VersionConflictError:
                conflicts.append(i)
        raise AssertionError(f"worker {i} never got its change in")

    errors = _run_threads(read_modify_write)
    assert errors == []
    state = store.get_state("a.b", "production")
    assert state.tenants_on == {f"t{i}" for i in range(THREADS)}
    assert state.version == THREADS
    assert len(history_rows(store, flag="a.b", action="state.update")) == THREADS


class TestKill:
    def test_kill__all_environments__killed_with_reason_and_actor(
        self, store: SqlFlagStore
    ) -> None:
        """A kill without environments kills the flag everywhere, recording who and why."""
        store.create_flag("a.b", actor="t")
        result = store.kill("a.b", None, reason="401 storm", actor="oncall")
        assert sorted(result.changed) == ENVS
        for env in ENVS:
            state = store.get_state("a.b", env)
            assert (state.killed, state.kill_reason, state.killed_by) == (
                True,
                "401 storm",
                "oncall",
            )
            assert state.killed_at is not None and state.version == 1

    def test_kill__already_killed__unchanged_and_no_history(self, store: SqlFlagStore) -> None:
        """Killing a killed flag changes nothing and writes no row."""
        store.create_flag("a.b", actor="t")
        store.kill("a.b", ["beta"], reason="first", actor="t")
        before = dump(store)
        result = store.kill("a.b", ["beta"], reason="again", actor="t")
        assert result.changed == []
        assert result.states["beta"].kill_reason == "first"
        assert dump(store) == before

    def test_kill__some_environments__others_untouched(self, store: SqlFlagStore) -> None:
        """A kill in named environments leaves the others as they were."""
        store.create_flag("a.b", actor="t")
        store.kill("a.b", ["beta", "production"], reason="r", actor="t")
        killed = {env: store.get_state("a.b", env).killed for env in ENVS}
        assert killed == {"beta": True, "development": False, "production": True, "staging": False}

    def test_unkill__restores_previous_state(self, store: SqlFlagStore) -> None:
        """Unkill clears the kill facts; enabled, rollout and tenants are as before the kill."""
        store.create_flag("a.b", actor="t")
        store.update_state("a.b", "beta", StateChange(enabled=True, rollout=40), actor="t")
        store.kill("a.b", ["beta"], reason="r", actor="t")
        store.unkill("a.b", ["beta"], reason="ok", actor="t")
        state = store.get_state("a.b", "beta")
        assert (state.killed, state.kill_reason, state.killed_at, state.killed_by) == (
            False,
            None,
            None,
            None,
        )
        assert (state.enabled, state.rollout, state.version) == (True, 40, 3)

    @pytest.mark.parametrize("reason", ["", "   "])
    def test_kill__empty_reason__validation_error(self, store: SqlFlagStore, reason: str) -> None:
        """The reason is required."""
        store.create_flag("a.b", actor="t")
        with pytest.raises(ValidationError) as info:
            store.kill("a.b", None, reason=reason, actor="t")
        assert info.value.field == "reason"

    def test_kill__unknown_environment__nothing_written(self, store: SqlFlagStore) -> None:
        """One unknown environment fails the whole kill before anything is written."""
        store.create_flag("a.b", actor="t")
        before = dump(store)
        with pytest.raises(EnvironmentNotFoundError):
            store.kill("a.b", ["beta", "nowhere"], reason="r", actor="t")
        with pytest.raises(FlagNotFoundError):
            store.kill("x.y", None, reason="r", actor="t")
        assert dump(store) == before


def test_listeners__after_commit__get_changes_and_cannot_fail_them(store: SqlFlagStore) -> None:
    """Listeners see each committed change with its environment version; a raising
    listener does not undo or fail the change."""
    seen: list[FlagChanged] = []

    def broken(_events: Any) -> None:
        raise RuntimeError("listener bug")

    store.listeners.extend([broken, seen.extend])
    store.create_flag("a.b", actor="t")
    state = store.update_state("a.b", "beta", StateChange(enabled=True), actor="t")
    assert seen[-1] == FlagChanged("beta", store.environment_version("beta"), "a.b", state)
    store.archive_flag("a.b", actor="t")
    assert {(e.environment, e.state) for e in seen[-4:]} == {(env, None) for env in ENVS}


def test_snapshot__archived_flag__absent_and_version_moves(store: SqlFlagStore) -> None:
    """Snapshots hold live flags only, at the environment's current version."""
    store.create_flag("a.b", actor="t")
    store.create_flag("c.d", actor="t")
    first = store.snapshot("beta")
    store.archive_flag("c.d", actor="t")
    second = store.snapshot("beta")
    assert set(first.flags) == {"a.b", "c.d"}
    assert set(second.flags) == {"a.b"}
    assert second.version > first.version
    with pytest.raises(EnvironmentNotFoundError):
        store.snapshot("nowhere")


class TestFlagsAndEnvironments:
    def test_create_flag__twice__already_exists(self, store: SqlFlagStore) -> None:
        """A key is created once; the second attempt names the key."""
        store.create_flag("a.b", actor="t")
        with pytest.raises(AlreadyExistsError) as info:
            store.create_flag("a.b", actor="t")
        assert info.value.field == "key"

    def test_create_environment__existing_flags__get_a_disabled_state(
        self, store: SqlFlagStore
    ) -> None:
        """A new environment holds every existing flag, off, at version 0."""
        store.create_flag("a.b", actor="t")
        store.create_environment("qa", actor="t")
        assert store.get_state("a.b", "qa") == FlagState()
        with pytest.raises(AlreadyExistsError):
            store.create_environment("qa", actor="t")

    def test_list_flags__filters__combine(self, store: SqlFlagStore) -> None:
        """kind, tag, archived and q filter together."""
        store.create_flag("auth.cache", kind="operational", tags=["auth"], actor="t")
        store.create_flag("auth.login", description="Login page", tags=["web"], actor="t")
        store.create_flag("billing.v2", description="new AUTH flow", actor="t")
        store.archive_flag("auth.login", actor="t")

        def keys(**kw: Any) -> list[str]:
            return [r.flag.key for r in store.list_flags(**kw)]

        assert keys(kind="operational") == ["auth.cache"]
        assert keys(tag="web") == ["auth.login"]
        assert keys(archived=False) == ["auth.cache", "billing.v2"]
        assert keys(q="auth") == ["auth.cache", "auth.login", "billing.v2"]
        assert keys(q="login", archived=True) == ["auth.login"]
        assert list(store.list_flags(scope=["beta"])[0].states) == ["beta"]


class TestTokens:
    def test_create_token__value__random_shown_once_stored_hashed(
        self, store: SqlFlagStore
    ) -> None:
        """The value carries at least 32 random bytes and only its SHA-256 is stored."""
        info, secret = store.create_token("ci", "editor", ["beta"], actor="t")
        _info2, other = store.create_token("ci2", "editor", None, actor="t")
        assert secret != other
        assert len(secret.removeprefix("frl_")) >= 43  # 32 bytes in URL-safe base64
        rows = dump(store)["tokens"]
        assert not any(secret in str(row) for row in rows)
        assert any(hash_token(secret) in row for row in rows)
        assert store.authenticate(secret) == info
        assert store.authenticate(secret + "x") is None

    def test_revoke_token__then_authenticate__refused(self, store: SqlFlagStore) -> None:
        """A revoked token stops authenticating; revoking an unknown id is not found."""
        info, secret = store.create_token("ci", "reader", None, actor="t")
        store.revoke_token(info.id, actor="t")
        assert store.authenticate(secret) is None
        with pytest.raises(TokenNotFoundError):
            store.revoke_token("nope", actor="t")

    def test_create_token__bad_role_or_environment__named(self, store: SqlFlagStore) -> None:
        """A bad role or an unknown environment is refused, naming the field."""
        with pytest.raises(ValidationError) as info:
            store.create_token("ci", "root", None, actor="t")
        assert info.value.field == "role"
        with pytest.raises(EnvironmentNotFoundError) as not_found:
            store.create_token("ci", "reader", ["nowhere"], actor="t")
        assert not_found.value.field == "environments"


def test_store__value_the_database_refuses__validation_error_not_outage(
    store: SqlFlagStore,
) -> None:
    """A value PostgreSQL cannot hold (a NUL character) is bad input, not a 503; SQLite
    stores it."""
    if store.is_postgres:
        with pytest.raises(ValidationError, match="cannot be stored"):
            store.create_flag("a.b", owner="nul\x00here", actor="t")
        with pytest.raises(ValidationError):
            store.list_history(HistoryQuery(actor="nul\x00here"))
    else:
        store.create_flag("a.b", owner="nul\x00here", actor="t")
        assert store.get_flag("a.b").flag.owner == "nul\x00here"


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "sqlite"])
def test_store__database_unreachable__store_unavailable(scheme: str, tmp_path: Any) -> None:
    """A database that does not answer raises StoreUnavailableError on reads and writes."""
    if scheme == "sqlite":
        url = f"sqlite:///{tmp_path}/missing-dir/x.db"
    else:
        url = f"{scheme}://postgres@127.0.0.1:{free_port()}/flagrail"
    store = SqlFlagStore(url)
    try:
        with pytest.raises(StoreUnavailableError):
            store.ping()
        with pytest.raises(StoreUnavailableError):
            store.authenticate("frl_x")
        with pytest.raises(StoreUnavailableError):
            store.create_flag("a.b", actor="t")
    finally:
        store.close()
