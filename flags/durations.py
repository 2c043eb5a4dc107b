"""Durations (``"30s"``, ``"10m"``, ``"2h"``, ``"7d"``) and points in time, as people write them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from flags.errors import ValidationError

__all__ = ["parse_duration", "parse_instant"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: object, field: str = "duration") -> timedelta:
    """Parse ``"<number><unit>"`` with unit ms, s, m, h, d or w. Never negative.

    Raises ``ValidationError`` naming ``field``.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValidationError(f"{field} must not be negative", field=field)
        return timedelta(seconds=float(text))
    if not isinstance(text, str):
        raise ValidationError(f"{field} must be a duration like '30m'", field=field)
    match = _DURATION.match(text)
    if not match:
        raise ValidationError(
            f"{field} must be a duration like '30s', '10m', '2h' or '7d', got {text!r:.40}",
            field=field,
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_instant(text: object, field: str = "at", *, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (UTC if it names no zone), or a duration meaning that long ago.

    Raises ``ValidationError`` naming ``field``.
    """
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(f"{field} must be an ISO-8601 time or a duration", field=field)
    if _DURATION.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text, field)
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationError(
            f"{field} must be an ISO-8601 time or a duration like '30d', got {text!r:.40}",
            field=field,
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)
