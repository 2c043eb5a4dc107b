"""The append-only flag history's pure half: who acted (``Actor``), what a reader asks
for (``HistoryQuery``), what it gets (``HistoryPage``), and the page cursor.

The SQL half (writing rows inside a change's transaction, reading pages) is
``flags.store.history``; nothing here does I/O.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flags.errors import ValidationError
from flags.model import HistoryEntry

__all__ = [
    "AT_SKEW",
    "MAX_ID",
    "MAX_PAGE",
    "Actor",
    "HistoryPage",
    "HistoryQuery",
    "actor_columns",
    "decode_cursor",
    "encode_cursor",
    "utc",
]

MAX_PAGE = 500
# The largest history id (a signed 64-bit BIGINT): a cursor past it is not one of ours.
MAX_ID = 2**63 - 1
# The most that ``at`` order and insertion (id) order of two rows may disagree by.
AT_SKEW = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change, as its history row records it.

    ``name`` is the row's ``actor``: the actor a ``guard`` token claimed
    (``X-Flagrail-Actor``) if any, else the token's name (or ``cli:<user>``,
    ``plan:<id>``, ``system``, with no token). ``token_id``/``token_name`` name the
    API token that made the change, whatever was claimed; ``claimed`` keeps the
    claimed actor in a field of its own. ``str(actor)`` is ``name``.
    """

    name: str
    token_id: str | None = None
    token_name: str | None = None
    claimed: str | None = None

    def __str__(self) -> str:
        return self.name


def actor_columns(actor: str | Actor) -> dict[str, str | None]:
    """The history columns ``actor``, ``token_id``, ``token_name`` and ``claimed_actor``
    of a change made by ``actor`` (a plain string: no token)."""
    if isinstance(actor, Actor):
        return {
            "actor": actor.name,
            "token_id": actor.token_id,
            "token_name": actor.token_name,
            "claimed_actor": actor.claimed,
        }
    return {"actor": str(actor), "token_id": None, "token_name": None, "claimed_actor": None}


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Filters for a history page. ``scope`` limits rows to those environments (plus
    flag-level rows with no environment); None means every environment.
    ``hidden_actions`` are left out whatever the filters; of the ``token_actions``
    rows, only those about a token in ``visible_tokens`` are listed (None: all)."""

    flag: str | None = None
    environment: str | None = None
    actor: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    cursor: str | None = None
    scope: tuple[str, ...] | None = None
    hidden_actions: tuple[str, ...] = ()
    token_actions: tuple[str, ...] = ()
    visible_tokens: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[HistoryEntry]
    next_cursor: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"items": [e.to_dict() for e in self.items], "next_cursor": self.next_cursor}


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"h:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """Raises ``ValidationError`` (field ``cursor``) for anything ``encode_cursor`` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if prefix != "h":
            raise ValueError(raw)
        value = int(number)
        if not 0 <= value <= MAX_ID:
            raise ValueError(raw)
        return value
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError("cursor is not a next_cursor of this API", field="cursor") from exc


def utc(value: datetime) -> datetime:
    """``value`` in UTC. SQLite hands back naive datetimes; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
