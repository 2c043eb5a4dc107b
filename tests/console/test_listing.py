"""The grid's listing (``api.console.listing``) against a service double: what it
replays from the history and when it reloads."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from api.console.listing import MAX_REPLAY, Listings
from api.service import Principal
from api.service.commands import FlagFilter
from flags.errors import FlagNotFoundError
from flags.history import HistoryPage, encode_cursor
from flags.model import Flag, FlagRecord, FlagState, Role

ADMIN = Principal(None, "user:alice", Role.ADMIN)
ALL = FlagFilter(archived=False)


@dataclass
class Row:
    id: int
    flag: str | None
    action: str = "state.update"


@dataclass
class View:
    record: FlagRecord


@dataclass
class FakeService:
    """Flags by key and a history whose rows can be committed in any id order."""

    flags: dict[str, FlagRecord] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    full_loads: int = 0
    gets: list[str] = field(default_factory=list)

    def put(self, key: str, rollout: int = 0, *, row_id: int, description: str = "") -> None:
        flag = Flag(key, description=description, created_at=datetime.now(UTC))
        self.flags[key] = FlagRecord(flag, {"production": FlagState(rollout=rollout)})
        self.rows.append(Row(row_id, key))

    def history(self, principal: Principal, query: Any) -> HistoryPage:
        ordered = sorted(self.rows, key=lambda r: -r.id)
        if query.cursor is not None:
            from flags.history import decode_cursor

            last = decode_cursor(query.cursor)
            ordered = [r for r in ordered if r.id < last]
        page = ordered[: query.limit]
        more = len(ordered) > query.limit
        return HistoryPage(page, encode_cursor(page[-1].id) if more else None)  # type: ignore[arg-type]

    def list_flags(self, principal: Principal, query: FlagFilter) -> list[FlagRecord]:
        self.full_loads += 1
        return [self.flags[k] for k in sorted(self.flags)]

    def get_flag(self, principal: Principal, key: str) -> View:
        self.gets.append(key)
        if key not in self.flags:
            raise FlagNotFoundError(key)
        return View(self.flags[key])


def rollouts(listings: Listings, service: FakeService) -> dict[str, int]:
    records = listings.flags(service, ADMIN, ALL)  # type: ignore[arg-type]
    return {r.flag.key: r.states["production"].rollout for r in records}


def test_listing__change_after_load__only_that_flag_reread() -> None:
    service = FakeService()
    for i in range(1, 6):
        service.put(f"f{i}", row_id=i)
    listings = Listings()
    assert len(rollouts(listings, service)) == 5 and service.full_loads == 1
    service.put("f3", 40, row_id=6)
    assert rollouts(listings, service)["f3"] == 40
    assert service.full_loads == 1 and service.gets == ["f3"]
    rollouts(listings, service)
    assert service.gets == ["f3"]  # nothing new: nothing reread


def test_listing__late_commit_below_newest__replayed() -> None:
    """PostgreSQL may commit id 7 after id 8: 7 is still applied."""
    service = FakeService()
    service.put("a", row_id=1)
    service.put("b", row_id=2)
    listings = Listings()
    rollouts(listings, service)
    service.put("b", 20, row_id=8)
    assert rollouts(listings, service)["b"] == 20
    service.put("a", 70, row_id=7)  # committed late
    assert rollouts(listings, service)["a"] == 70
    assert service.full_loads == 1


def test_listing__new_environment_or_long_gap__full_reload() -> None:
    service = FakeService()
    service.put("a", row_id=1)
    listings = Listings()
    rollouts(listings, service)
    service.rows.append(Row(2, None, "environment.create"))
    rollouts(listings, service)
    assert service.full_loads == 2
    for i in range(MAX_REPLAY + 150):
        service.put(f"g{i}", row_id=3 + i)
    assert len(rollouts(listings, service)) == MAX_REPLAY + 151
    assert service.full_loads == 3


def test_listing__deleted_flag_dropped_and_search_matches_description() -> None:
    service = FakeService()
    service.put("a", row_id=1, description="Checkout Button")
    service.put("b", row_id=2)
    listings = Listings()
    rollouts(listings, service)
    del service.flags["b"]
    service.rows.append(Row(3, "b", "flag.archive"))
    assert list(rollouts(listings, service)) == ["a"]
    found = listings.flags(service, ADMIN, FlagFilter(q="BUTTON"))  # type: ignore[arg-type]
    assert [r.flag.key for r in found] == ["a"]
