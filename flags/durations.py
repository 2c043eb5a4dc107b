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
        seconds = float(text)
    elif not isinstance(text, str):
        raise ValidationError(f"{field} must be a duration like '30m'", field=field)
    else:
        match = _DURATION.match(text)
        if not match:
            raise ValidationError(
                f"{field} must be a duration like '30s', '10m', '2h' or '7d', got {text!r:.40}",
                field=field,
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return timedelta(seconds=seconds)
    except (OverflowError, ValueError) as exc:  # beyond timedelta's range, or NaN
        raise ValidationError(f"{field} is out of range, got {text!r:.40}", field=field) from exc


def parse_instant(text: object, field: str = "at", *, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (UTC if it names no zone), or a duration meaning that long ago;
    returned in UTC.

    Raises ``ValidationError`` naming ``field``, also for an instant outside years 1-9999.
    """
    if isinstance(text, datetime):
        value = text
    elif not isinstance(text, str) or not text.strip():
        raise ValidationError(f"{field} must be an ISO-8601 time or a duration", field=field)
    elif _DURATION.match(text):
        ago = parse_duration(text, field)
        try:
            return (now or datetime.now(UTC)) - ago
        except OverflowError as exc:
            raise ValidationError(f"{field} reaches before year 1", field=field) from exc
    else:
        try:
            value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationError(
                f"{field} must be an ISO-8601 time or a duration like '30d', got {text!r:.40}",
                field=field,
            ) from exc
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:
        raise ValidationError(f"{field} is outside years 1-9999 in UTC", field=field) from exc
