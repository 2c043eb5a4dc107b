"""Pure helpers of the console's pages: state words, the grid's page, form parsing and
field-level diffs. No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flags.errors import ValidationError
from flags.model import FlagRecord, FlagState, StateChange, validate_rollout, validate_tenants

__all__ = [
    "STATE_WORDS",
    "Change",
    "Grid",
    "diff",
    "parse_state_form",
    "state_word",
]

STATE_WORDS = ("on", "partial", "off", "killed")
DIFF_FIELDS = ("enabled", "rollout", "tenants_on", "tenants_off", "killed", "kill_reason")


def state_word(state: FlagState) -> str:
    """``killed``, ``off``, ``on`` (enabled at 100 %) or ``partial``."""
    if state.killed:
        return "killed"
    if not state.enabled:
        return "off"
    return "on" if state.rollout >= 100 and not state.tenants_off else "partial"


@dataclass(frozen=True, slots=True)
class Grid:
    """One page of the flags grid."""

    rows: list[FlagRecord]
    total: int
    page: int
    pages: int


def _tenants(raw: str, field: str) -> frozenset[str]:
    parts = [p.strip() for p in raw.replace("\n", ",").split(",")]
    return validate_tenants([p for p in parts if p], field)


def parse_state_form(form: Mapping[str, Any]) -> StateChange:
    """A whole-state change from an edit form: ``enabled`` (a checkbox), ``rollout``
    (0..100), ``tenants_on`` and ``tenants_off`` (comma- or line-separated). Raises
    ``ValidationError`` naming the field."""
    raw = str(form.get("rollout", "")).strip()
    if not raw.isdigit():
        raise ValidationError("rollout must be a whole number from 0 to 100", field="rollout")
    return StateChange(
        enabled=form.get("enabled") in ("on", "true", "1"),
        rollout=validate_rollout(int(raw)),
        tenants_on=_tenants(str(form.get("tenants_on", "")), "tenants_on"),
        tenants_off=_tenants(str(form.get("tenants_off", "")), "tenants_off"),
    )


def applied(state: FlagState, change: StateChange) -> dict[str, Any]:
    """What ``state`` becomes under a whole-state ``change`` (for the preview)."""
    return {
        "enabled": state.enabled if change.enabled is None else change.enabled,
        "rollout": state.rollout if change.rollout is None else change.rollout,
        "tenants_on": sorted(state.tenants_on if change.tenants_on is None else change.tenants_on),
        "tenants_off": sorted(
            state.tenants_off if change.tenants_off is None else change.tenants_off
        ),
        "killed": state.killed,
        "kill_reason": state.kill_reason,
    }


def state_fields(state: FlagState) -> dict[str, Any]:
    return {
        "enabled": state.enabled,
        "rollout": state.rollout,
        "tenants_on": sorted(state.tenants_on),
        "tenants_off": sorted(state.tenants_off),
        "killed": state.killed,
        "kill_reason": state.kill_reason,
    }


@dataclass(frozen=True, slots=True)
class Change:
    """One field of a diff."""

    field: str
    before: Any
    after: Any


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "(none)"
    return str(value)


def diff(before: Any, after: Any) -> list[Change]:
    """The fields that differ between two history/state values, each shown as text.

    Dicts are compared key by key (the state fields first, in their order; ``version``
    and timestamps left out); anything else is one ``value`` field."""
    if isinstance(before, Mapping) or isinstance(after, Mapping):
        b = before if isinstance(before, Mapping) else {}
        a = after if isinstance(after, Mapping) else {}
        keys = [k for k in DIFF_FIELDS if k in b or k in a]
        keys += sorted(
            k
            for k in {*b, *a}
            if k not in DIFF_FIELDS
            and k not in ("version", "updated_at", "killed_at", "created_at")
        )
        return [Change(k, _show(b.get(k)), _show(a.get(k))) for k in keys if b.get(k) != a.get(k)]
    if before == after:
        return []
    return [Change("value", _show(before), _show(after))]
