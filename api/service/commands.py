"""Typed commands of ``AdminService``: what a caller asks for, already parsed.

The HTTP routes build them from request bodies (``api.schemas``), the CLI's
database mode from the same bodies through the same models, so both front ends
hand the service identical values. Commands are frozen and hold no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flags.durations import parse_instant
from flags.history import HistoryQuery
from flags.model import FlagKind, Role, StateChange

__all__ = [
    "CreateFlag",
    "CreateToken",
    "EditVariant",
    "FlagFilter",
    "Kill",
    "MovePlan",
    "PlanMove",
    "SetState",
    "UpdateFlag",
    "VariantEdit",
    "history_filter",
]


@dataclass(frozen=True, slots=True)
class FlagFilter:
    """``list_flags`` filters; None is no filter."""

    kind: str | None = None
    tag: str | None = None
    archived: bool | None = None
    q: str | None = None


@dataclass(frozen=True, slots=True)
class CreateFlag:
    """A new flag. A typed flag (#19: ``type`` string, number or json) declares its
    ``variants`` (``{"name", "value"}`` each) and ``off_variant`` (the safe value);
    ``on_variant`` defaults to it."""

    key: str
    description: str = ""
    kind: FlagKind | str = FlagKind.RELEASE
    owner: str | None = None
    tags: tuple[str, ...] = ()
    type: str = "boolean"
    variants: tuple[Mapping[str, Any], ...] | None = None
    off_variant: str | None = None
    on_variant: str | None = None


class VariantEdit(StrEnum):
    """What ``EditVariant`` does to a typed flag's variant (#19)."""

    ADD = "add"
    RENAME = "rename"
    SET_VALUE = "set_value"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class EditVariant:
    """Add variant ``name`` (with ``value``), rename it to ``new_name``, give it a new
    ``value``, or remove it, on flag ``key``."""

    key: str
    name: str
    edit: VariantEdit
    value: Any = None
    new_name: str | None = None


@dataclass(frozen=True, slots=True)
class UpdateFlag:
    """Flag-level metadata to change: ``changes`` holds only the fields the caller set,
    among ``description``, ``owner``, ``tags`` and ``kind`` (``owner: None`` clears it)."""

    key: str
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetState:
    """Change ``key`` in ``environment``; with ``expected_version``, only from that version."""

    key: str
    environment: str
    change: StateChange
    reason: str | None = None
    expected_version: int | None = None


@dataclass(frozen=True, slots=True)
class Kill:
    """Kill (or, with ``AdminService.unkill``, lift the kill of) ``key`` in
    ``environments``; None means every environment the principal covers."""

    key: str
    reason: str
    environments: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class CreateToken:
    """A new token; ``flags`` (None: every flag) are fnmatch patterns of the flag keys
    it may act on; ``user`` the console user it is issued to (None: no one)."""

    name: str
    role: Role | str
    environments: tuple[str, ...] | None = None
    flags: tuple[str, ...] | None = None
    user: str | None = None  # the console user it is issued to (#15)


class PlanMove(StrEnum):
    """What a person does to a plan: ``pause`` and ``abort`` only stop things;
    ``resume`` and ``advance`` move a rollout forward."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ADVANCE = "advance"


@dataclass(frozen=True, slots=True)
class MovePlan:
    """``move`` plan ``plan_id``; ``reason`` is recorded in the history (not for
    ``advance``, whose stage change names its actor)."""

    plan_id: int
    move: PlanMove
    reason: str | None = None


def history_filter(
    *,
    flag: str | None = None,
    environment: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> HistoryQuery:
    """History filters from query-string values: ``since``/``until`` are ISO-8601 times
    or durations ago. The service sets the query's ``scope`` and ``hidden_actions``
    from the principal. Raises ``ValidationError`` naming ``since`` or ``until``."""
    return HistoryQuery(
        flag=flag,
        environment=environment,
        actor=actor,
        action=action,
        since=parse_instant(since, "since") if since else None,
        until=parse_instant(until, "until") if until else None,
        limit=100 if limit is None else limit,
        cursor=cursor,
    )
