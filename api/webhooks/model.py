"""Webhook subscriptions as pure values: what a request body may say, validated.

``parse_subscription`` turns a ``POST /admin/webhooks`` body into a
``SubscriptionSpec`` (or raises ``ValidationError`` naming the field);
``parse_update`` does the same for a partial ``PATCH`` body. Nothing here does I/O.

Bounds (each a contract the API states): a URL is ``http`` or ``https`` with a host,
at most ``MAX_URL`` characters; at most ``MAX_PATTERNS`` event patterns and flag
patterns, each at most ``MAX_PATTERN`` characters; at most ``MAX_ENVIRONMENTS``
environments. Event patterns are ``fnmatch`` patterns over event types
(``flag.*``, ``state.killed``, ``*``); a pattern that can match no event type is
refused, so a typo never makes a silent subscription.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from flags.errors import ValidationError
from flags.model import validate_environment_name

__all__ = [
    "ADMIN_EVENT_TYPES",
    "EVENT_TYPES",
    "MAX_ENVIRONMENTS",
    "MAX_PATTERN",
    "MAX_PATTERNS",
    "MAX_URL",
    "Format",
    "Subscription",
    "SubscriptionSpec",
    "parse_subscription",
    "parse_update",
]

MAX_URL = 2000
MAX_PATTERNS = 20
MAX_PATTERN = 100
MAX_ENVIRONMENTS = 50

# Every event type a subscription can ask for (``api.webhooks.events`` maps history
# actions onto them). The last group only ever reaches subscriptions made by an
# unscoped admin.
EVENT_TYPES: tuple[str, ...] = (
    "flag.created",
    "flag.updated",
    "flag.archived",
    "state.updated",
    "state.killed",
    "state.unkilled",
    "plan.created",
    "plan.advanced",
    "plan.paused",
    "plan.resumed",
    "plan.aborted",
    "plan.rolled_back",
    "plan.completed",
    "schedule.created",
    "schedule.applied",
    "schedule.paused",
    "schedule.resumed",
    "schedule.aborted",
    "schedule.rolled_back",
    "schedule.completed",
    "environment.created",
    "token.created",
    "token.revoked",
    "user.created",
    "user.updated",
    "user.deleted",
    "webhook.created",
    "webhook.updated",
    "webhook.deleted",
    "webhook.paused",
    "webhook.resumed",
    "webhook.redelivered",
)
ADMIN_EVENT_TYPES = frozenset(
    t for t in EVENT_TYPES if t.split(".")[0] in {"token", "user", "webhook"}
)

_PATTERN = re.compile(r"^[a-z0-9_.*?\[\]-]+$")


class Format(StrEnum):
    """How a delivery's body looks: a signed Standard Webhooks JSON event, or a Slack
    incoming-webhook message (also signed: Slack ignores the headers)."""

    STANDARD = "standard"
    SLACK = "slack"


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """A validated subscription body. ``environments`` / ``flags`` None: every one."""

    url: str
    events: tuple[str, ...]
    environments: tuple[str, ...] | None = None
    flags: tuple[str, ...] | None = None
    format: Format = Format.STANDARD
    description: str = ""


@dataclass(frozen=True, slots=True)
class Subscription:
    """A stored subscription, without its secret.

    ``scope`` is the environment scope of the token that made it (None: every
    environment): events of other environments never reach it, whatever
    ``environments`` says. ``admin`` is whether that token was an unscoped admin:
    only then do token and user events reach it.
    """

    id: str
    spec: SubscriptionSpec
    paused: bool
    created_at: datetime
    created_by: str
    scope: tuple[str, ...] | None = None
    admin: bool = False
    updated_at: datetime | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The API form (never the secret)."""
        return {
            "id": self.id,
            "url": self.spec.url,
            "events": list(self.spec.events),
            "environments": list(self.spec.environments)
            if self.spec.environments is not None
            else None,
            "flags": list(self.spec.flags) if self.spec.flags is not None else None,
            "format": self.spec.format.value,
            "description": self.spec.description,
            "paused": self.paused,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "scope": list(self.scope) if self.scope is not None else None,
        }


_FIELDS = frozenset({"url", "events", "environments", "flags", "format", "description"})


def parse_subscription(body: object) -> SubscriptionSpec:
    """Validate a create body. Raises ``ValidationError`` naming the first bad field;
    ``url`` and ``events`` are required, the rest optional."""
    data = _mapping(body)
    for name in ("url", "events"):
        if name not in data:
            raise ValidationError(f"{name} is required", field=name)
    return _build(SubscriptionSpec(url="http://placeholder.invalid", events=("*",)), data)


def parse_update(current: SubscriptionSpec, body: object) -> SubscriptionSpec:
    """``current`` with the fields a partial update body names, validated the same way
    (``environments`` / ``flags`` null clears the filter)."""
    return _build(current, _mapping(body))


def _mapping(body: object) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise ValidationError("body must be a JSON object", field="body")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", field=str(unknown[0]))
    return body


def _build(base: SubscriptionSpec, data: Mapping[str, Any]) -> SubscriptionSpec:
    spec = base
    if "url" in data:
        spec = replace(spec, url=validate_url(data["url"]))
    if "events" in data:
        spec = replace(spec, events=_event_patterns(data["events"]))
    if "environments" in data:
        spec = replace(spec, environments=_environments(data["environments"]))
    if "flags" in data:
        spec = replace(spec, flags=_flag_patterns(data["flags"]))
    if "format" in data:
        value = data["format"]
        if value not in {f.value for f in Format}:
            raise ValidationError(
                f"format must be 'standard' or 'slack', got {value!r}", field="format"
            )
        spec = replace(spec, format=Format(value))
    if "description" in data:
        value = data["description"]
        if not isinstance(value, str) or len(value) > 500:
            raise ValidationError(
                "description must be a string of at most 500 characters", field="description"
            )
        spec = replace(spec, description=value)
    return spec


def validate_url(value: object) -> str:
    """``value`` if it is an absolute ``http``/``https`` URL with a host and no
    credentials, at most ``MAX_URL`` characters; else ``ValidationError`` (``url``)."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise ValidationError(f"url must be a string of 1 to {MAX_URL} characters", field="url")
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise ValidationError(f"url is not a valid URL: {value!r}", field="url") from exc
    if parts.scheme not in {"http", "https"}:
        raise ValidationError(f"url must be http or https, got {parts.scheme!r}", field="url")
    if not parts.hostname:
        raise ValidationError("url must name a host", field="url")
    if parts.username is not None or parts.password is not None:
        raise ValidationError("url must not carry credentials", field="url")
    if any(ch.isspace() for ch in value):
        raise ValidationError("url must not contain whitespace", field="url")
    del port
    return value


def _patterns(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{name} must be a non-empty list of patterns", field=name)
    if len(value) > MAX_PATTERNS:
        raise ValidationError(f"{name} may hold at most {MAX_PATTERNS} patterns", field=name)
    out: list[str] = []
    for item in value:
        if (
            not isinstance(item, str)
            or not 1 <= len(item) <= MAX_PATTERN
            or not _PATTERN.fullmatch(item)
        ):
            raise ValidationError(
                f"{name} patterns are 1 to {MAX_PATTERN} characters of a-z 0-9 _ . - * ? [ ],"
                f" got {item!r}",
                field=name,
            )
        if item not in out:
            out.append(item)
    return tuple(out)


def _event_patterns(value: object) -> tuple[str, ...]:
    patterns = _patterns(value, "events")
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(t, pattern) for t in EVENT_TYPES):
            raise ValidationError(
                f"events pattern {pattern!r} matches no event type"
                f" (types: {', '.join(EVENT_TYPES)})",
                field="events",
            )
    return patterns


def _flag_patterns(value: object) -> tuple[str, ...] | None:
    return None if value is None else _patterns(value, "flags")


def _environments(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise ValidationError("environments must be a non-empty list or null", field="environments")
    if len(value) > MAX_ENVIRONMENTS:
        raise ValidationError(
            f"environments may hold at most {MAX_ENVIRONMENTS} names", field="environments"
        )
    names: list[str] = []
    for item in value:
        name = validate_environment_name(item, "environments")
        if name not in names:
            names.append(name)
    return tuple(names)
