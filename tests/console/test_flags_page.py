"""``SqlFlagStore.list_flags_page``: the flags grid's filters, sort and paging in SQL
agree with filtering every flag in Python (``state_word``), on SQLite and PostgreSQL; the
search is a literal substring; on SQLite the state filter reads the 0013 index."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from api.console.views import STATE_WORDS, state_word
from flags.errors import ValidationError
from flags.model import FlagRecord, StateChange
from flags.store.sql import SqlFlagStore


@pytest.fixture
def store(database_url: str) -> Iterator[SqlFlagStore]:
    s = SqlFlagStore(database_url)
    known = {e.name for e in s.list_environments()}
    for env in ("staging", "production"):
        if env not in known:
            s.create_environment(env, actor="test")
    for i in range(12):
        s.create_flag(
            f"f.{i:02}",
            actor="test",
            description="Search box" if i == 7 else "",
            kind="operational" if i % 4 == 0 else "release",
            owner=f"team-{i % 3}",
            tags=(f"t{i % 2}", "web") if i % 5 else (),
        )
    changes = {
        1: StateChange(enabled=True, rollout=100),
        2: StateChange(enabled=True, rollout=30),
        3: StateChange(enabled=True, rollout=100, tenants_off=frozenset({"acme"})),
        4: StateChange(enabled=True, rollout=100),
    }
    for i, change in changes.items():
        s.update_state(f"f.{i:02}", "staging", change, actor="test")
    s.kill("f.04", ["production"], reason="test", actor="test")
    s.kill("f.09", ["staging"], reason="test", actor="test")
    s.archive_flag("f.11", actor="test")
    try:
        yield s
    finally:
        s.close()


def _reference(records: list[FlagRecord], **filters: Any) -> list[str]:
    out = []
    for r in records:
        if filters.get("owner") and r.flag.owner != filters["owner"]:
            continue
        if filters.get("state") and not any(
            state_word(st) == filters["state"] for st in r.states.values()
        ):
            continue
        out.append(r.flag.key)
    return out


FILTERS: list[dict[str, Any]] = [
    {},
    {"kind": "operational"},
    {"tag": "t1"},
    {"tag": "web", "q": "f.0"},
    {"q": "SEARCH"},
    {"owner": "team-1"},
    *({"state": word} for word in STATE_WORDS),
    {"state": "killed", "scope": ("staging",)},
    {"state": "on", "scope": ("production",)},
    {"owner": "team-0", "state": "off", "kind": "release"},
]


def test_list_flags_page__filters__same_as_filtering_every_flag(store: SqlFlagStore) -> None:
    """Every filter (one store per backend, the cases in a loop: a store is slow to make)."""
    for filters in FILTERS:
        page = store.list_flags_page(archived=False, page_size=1000, **filters)
        narrow = {k: v for k, v in filters.items() if k in ("kind", "tag", "q", "scope")}
        every = store.list_flags(archived=False, **narrow)
        expected = _reference(every, **filters)
        assert [r.flag.key for r in page.items] == expected, filters
        assert page.total == len(expected), filters
        assert [r.states for r in page.items] == [
            r.states for r in every if r.flag.key in expected
        ], filters
    assert [r.flag.key for r in store.list_flags_page(state="killed").items] == ["f.04", "f.09"]


def test_list_flags_page__pages_cut_in_order_and_clamped__bad_input_names_the_field(
    store: SqlFlagStore,
) -> None:
    keys = [r.flag.key for r in store.list_flags(archived=False)]
    seen = []
    for number in (1, 2, 3):
        page = store.list_flags_page(archived=False, page=number, page_size=5)
        assert (page.total, page.pages, page.page) == (11, 3, number)
        seen += [r.flag.key for r in page.items]
    assert seen == keys
    last = store.list_flags_page(archived=False, page=99, page_size=5)
    assert last.page == 3 and [r.flag.key for r in last.items] == keys[10:]
    empty = store.list_flags_page(q="nothing-matches")
    assert (empty.items, empty.total, empty.page, empty.pages) == ([], 0, 1, 1)
    for kwargs, field in (
        ({"state": "dead"}, "state"),
        ({"page": 0}, "page"),
        ({"page_size": 0}, "page_size"),
    ):
        with pytest.raises(ValidationError) as caught:
            store.list_flags_page(**kwargs)
        assert caught.value.field == field
    # list_flags reads the states of the flags it returns only: the same states.
    [record] = store.list_flags(q="f.03", scope=("staging",))
    assert record == store.get_flag("f.03", scope=("staging",))


def test_list_flags_page__search__literal_case_insensitive_substring(
    store: SqlFlagStore,
) -> None:
    """``%`` and ``_`` in the search match themselves (as wildcards, ``f_0`` would match
    ``f.00``..``f.09`` and ``f%1`` every key with a 1); the description is searched
    without regard to case, the key in its lowercase form."""
    for q, expected in (
        ("f_0", []),
        ("f%1", []),
        ("F.1", ["f.10"]),  # f.11 is archived
        ("box", ["f.07"]),
        ("SEARCH B", ["f.07"]),
    ):
        page = store.list_flags_page(archived=False, q=q)
        assert [r.flag.key for r in page.items] == expected, q
    store.create_flag("under_score", actor="test", description="100% on")
    assert [r.flag.key for r in store.list_flags_page(q="r_s").items] == ["under_score"]
    assert [r.flag.key for r in store.list_flags_page(q="0% O").items] == ["under_score"]


def test_list_flags_page__state_filter_on_sqlite__reads_the_grid_index(
    sqlite_url: str,
) -> None:
    """Every state word's queries (the page, and the count when the page is full)
    search ``ix_flag_states_killed_key`` (0013) and never scan ``flag_states``: the
    grid stays a seek per flag (or one short range for ``killed``) at any flag count."""
    s = SqlFlagStore(sqlite_url)
    plans: list[tuple[bool, str]] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = " | ".join(str(r[-1]) for r in rows.fetchall())
            plans.append(("flag_states.killed = " in statement, plan))

    try:
        for key in ("f.01", "f.02"):  # both off: a full page of one, so a count too
            s.create_flag(key, actor="test")
        event.listen(s.engine, "before_cursor_execute", explain)
        for word in STATE_WORDS:
            plans.clear()
            page = s.list_flags_page(archived=False, state=word, page_size=1)
            assert page.total == (2 if word == "off" else 0), word
            filtered = [plan for by_state, plan in plans if by_state]
            assert len(filtered) == (2 if word == "off" else 1), (word, plans)
            for plan in filtered:
                assert "ix_flag_states_killed_key" in plan, (word, plan)
            assert not [p for _, p in plans if "SCAN flag_states" in p], (word, plans)
    finally:
        s.close()
