"""The flags grid's listing, kept current from the history instead of reread per page.

Reading 10,000 flags with their states takes seconds on a loaded machine; a page of the
grid must not. Every change to a flag or a state writes a history row in its own
transaction, so a ``Listing`` loads every live flag once (``AdminService.list_flags``)
and then, on each page view, reads only the history rows newer than the last one it
applied and re-reads the flags they name (``AdminService.get_flag``). A row with no
flag (a new environment) or a gap too long to replay reloads everything.

Out-of-order commits (PostgreSQL hands out ids before commit) are caught by replaying
every id within ``MARGIN`` of the newest that was not seen before. Filters (kind, tag,
search, owner, state) are applied here, with the store's meaning: ``q`` matches key or
description, case-insensitively. Thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass, field

from api.console.views import state_word
from api.service import AdminService, Principal
from api.service.commands import FlagFilter, history_filter
from flags.errors import FlagNotFoundError
from flags.model import Action, FlagRecord

__all__ = ["Listings"]

MARGIN = 64  # ids below the newest that may still commit late
MAX_REPLAY = 500  # rows to replay before a full reload is cheaper
PAGE = 100


@dataclass
class _Listing:
    records: dict[str, FlagRecord]
    newest: int
    seen: set[int]  # ids applied within MARGIN of newest
    words: dict[str, frozenset[str]] = field(default_factory=dict)  # state words by key

    def __post_init__(self) -> None:
        for key, record in self.records.items():
            self.put(key, record)

    def put(self, key: str, record: FlagRecord) -> None:
        self.records[key] = record
        self.words[key] = frozenset(state_word(s) for s in record.states.values())

    def drop(self, key: str) -> None:
        self.records.pop(key, None)
        self.words.pop(key, None)


class Listings:
    """One listing per principal scope (environments and flag patterns), at most
    ``size`` of them."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._listings: dict[Hashable, _Listing] = {}
        self._lock = threading.Lock()

    def flags(
        self,
        service: AdminService,
        principal: Principal,
        query: FlagFilter,
        *,
        owner: str | None = None,
        state: str | None = None,
    ) -> list[FlagRecord]:
        """Live flags matching ``query`` (its ``archived`` is ignored: live only), the
        ``owner`` and a ``state`` word (in any environment), by key."""
        listing = self._current(service, principal)
        q = (query.q or "").lower()
        out = []
        for key in sorted(listing.records):
            r = listing.records[key]
            if query.kind is not None and r.flag.kind.value != query.kind:
                continue
            if query.tag is not None and query.tag not in r.flag.tags:
                continue
            if owner is not None and r.flag.owner != owner:
                continue
            if state is not None and state not in listing.words[key]:
                continue
            if q and q not in key.lower() and q not in r.flag.description.lower():
                continue
            out.append(r)
        return out

    def _current(self, service: AdminService, principal: Principal) -> _Listing:
        scope = (principal.scope, principal.flag_patterns)
        with self._lock:
            listing = self._listings.get(scope)
            if listing is None:
                listing = self._load(service, principal)
                if len(self._listings) >= self.size:
                    self._listings.pop(next(iter(self._listings)))
                self._listings[scope] = listing
                return listing
            if not self._replay(service, principal, listing):
                self._listings[scope] = listing = self._load(service, principal)
            return listing

    @staticmethod
    def _load(service: AdminService, principal: Principal) -> _Listing:
        # The history first: a change committed while the flags are read is replayed.
        top = service.history(principal, history_filter(limit=MARGIN)).items
        newest = top[0].id if top else 0
        records = service.list_flags(principal, FlagFilter(archived=False))
        return _Listing({r.flag.key: r for r in records}, newest, {e.id for e in top})

    @staticmethod
    def _replay(service: AdminService, principal: Principal, listing: _Listing) -> bool:
        """Apply the history rows not yet applied; False when a full reload is due."""
        floor = listing.newest - MARGIN
        fresh = []
        cursor = None
        while True:
            page = service.history(principal, history_filter(limit=PAGE, cursor=cursor))
            done = False
            for entry in page.items:
                if entry.id <= floor:
                    done = True
                    break
                if entry.id > listing.newest or entry.id not in listing.seen:
                    fresh.append(entry)
            if done or page.next_cursor is None:
                break
            if len(fresh) > MAX_REPLAY:
                return False
            cursor = page.next_cursor
        if not fresh:
            return True
        if any(e.action == Action.ENVIRONMENT_CREATE.value for e in fresh):
            return False
        for key in {e.flag for e in fresh if e.flag is not None}:
            try:
                record = service.get_flag(principal, key).record
            except FlagNotFoundError:
                listing.drop(key)
                continue
            if record.flag.archived:
                listing.drop(key)
            else:
                listing.put(key, record)
        listing.newest = max(listing.newest, *(e.id for e in fresh))
        listing.seen.update(e.id for e in fresh)
        low = listing.newest - MARGIN
        listing.seen = {i for i in listing.seen if i > low}
        return True
