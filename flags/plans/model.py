"""Rollout plans and scheduled changes, as pure values: parsing, guards and the state machine.

Nothing here does I/O or reads a clock: every function that needs the time takes
``now``. ``parse_plan`` / ``parse_schedule`` turn a request body (JSON, or a
YAML-loaded dict) into a ``PlanSpec``, raising ``ValidationError`` whose ``field``
names the offending part (``stages.2.rollout``, ``guards.0.max``). ``next_action``
decides what the scheduler does with one plan; ``pause`` / ``resume`` / ``abort`` /
``advance`` are the person-driven transitions.

A plan's life::

    pending --first stage--> running --last hold elapsed--> completed
       |                      |  ^
       |                      |  +-- resume (hold restarts) -- paused <-- pause
       |                      +-- guard breach / flag killed --> rolled_back --resume--> running
       +-- abort (from any state but completed/aborted) --> aborted

A scheduled change is a plan of kind ``schedule`` with one stage of hold 0 that
starts at its ``at``: it goes from ``pending`` straight to ``completed``.

Guard metric names (``<flag>.<counter>``, split at the last dot):

* ``<flag>.corrupt_rate`` = ``corrupt_reads / reads``; ``<flag>.mismatch_rate`` =
  ``mismatches / reads``; ``<flag>.error_rate`` = ``errors / reads``;
* any other ``<flag>.<name>_rate`` = ``<name> / reads`` (``per`` names another
  denominator counter);
* ``<flag>.<counter>`` without ``_rate`` is the raw count.

Counters are summed over the guard's window: the current stage's hold so far,
or the last ``window`` (a duration). A rate with a zero denominator has no value
and never breaches; a guard breaches when its value is strictly above ``max``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from flags.durations import parse_duration
from flags.errors import InvalidRuleError, PlanStateError, ValidationError
from flags.model import (
    VARIANT_NAME,
    StateChange,
    validate_environment_name,
    validate_flag_key,
    validate_rollout,
    validate_split,
    validate_tenant_variants,
    validate_tenants,
)

__all__ = [
    "MAX_DURATION",
    "MAX_GUARDS",
    "MAX_STAGES",
    "PAST_GRACE",
    "RATES",
    "ApplyStage",
    "Complete",
    "Guard",
    "Observation",
    "Plan",
    "PlanAction",
    "PlanKind",
    "PlanSpec",
    "PlanStatus",
    "Reading",
    "RollBack",
    "Stage",
    "Step",
    "Stop",
    "Wait",
    "abort",
    "advance",
    "change_to_dict",
    "format_duration",
    "guard_since",
    "measure",
    "next_action",
    "next_due",
    "parse_change",
    "parse_guard",
    "parse_plan",
    "parse_schedule",
    "parse_split",
    "parse_stage",
    "pause",
    "plan_actor",
    "previous_split",
    "resume",
    "spec_to_dict",
]

MAX_STAGES = 50
# Longest hold or guard window: a plan that waits longer is a calendar, not a rollout.
MAX_DURATION = timedelta(days=365)
MAX_GUARDS = 20
# A scheduled change may name a time this far in the past (clock skew); older is refused.
PAST_GRACE = timedelta(seconds=60)
# Rate metrics of the cache toolkit: suffix -> (numerator counter, denominator counter).
RATES: Mapping[str, tuple[str, str]] = {
    "corrupt_rate": ("corrupt_reads", "reads"),
    "mismatch_rate": ("mismatches", "reads"),
    "error_rate": ("errors", "reads"),
}
_COUNTER = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_STAGE_FIELDS = frozenset({"rollout", "tenants_on", "enabled", "split", "hold"})
_PLAN_FIELDS = frozenset({"environment", "stages", "guards", "start_at"})
_GUARD_FIELDS = frozenset({"metric", "max", "window", "per"})
_SCHEDULE_FIELDS = frozenset({"environment", "at", "change"})
_CHANGE_SETS = (
    "tenants_on",
    "tenants_off",
    "tenants_on_add",
    "tenants_on_remove",
    "tenants_off_add",
    "tenants_off_remove",
)
# Typed flags (#19): the variant fields of a state change.
_CHANGE_VARIANTS = ("off_variant", "on_variant", "split", "tenant_variants")
_CHANGE_FIELDS = frozenset({"enabled", "rollout", *_CHANGE_SETS, *_CHANGE_VARIANTS})


class PlanStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"

    @property
    def active(self) -> bool:
        """The scheduler acts only on active plans."""
        return self in (PlanStatus.PENDING, PlanStatus.RUNNING)

    @property
    def final(self) -> bool:
        """Nothing can happen to a final plan any more."""
        return self in (PlanStatus.COMPLETED, PlanStatus.ABORTED)


class PlanKind(StrEnum):
    PLAN = "plan"
    SCHEDULE = "schedule"


class PlanAction(StrEnum):
    """History action names of plan events (state changes are ``state.update`` / ``kill``)."""

    CREATE = "plan.create"
    STAGE = "plan.stage"
    PAUSE = "plan.pause"
    RESUME = "plan.resume"
    ABORT = "plan.abort"
    COMPLETE = "plan.complete"
    ROLL_BACK = "plan.rollback"


def plan_actor(plan_id: int) -> str:
    """The history actor of every step a plan takes: ``plan:<id>``."""
    return f"plan:{plan_id}"


# ------------------------------------------------------------------ durations
def format_duration(value: timedelta) -> str:
    """The shortest exact ``parse_duration`` form: ``timedelta(minutes=90)`` -> ``"90m"``."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _duration(value: object, field: str) -> timedelta:
    if isinstance(value, str) and value.strip().startswith("-"):
        raise ValidationError(f"{field} must not be negative, got {value!r:.40}", field=field)
    if isinstance(value, bool):
        raise ValidationError(f"{field} must be a duration like '30m'", field=field)
    if isinstance(value, (int, float)) and not math.isfinite(value):
        raise ValidationError(f"{field} must be a finite duration", field=field)
    try:
        duration = parse_duration(value, field)
    except OverflowError:
        duration = MAX_DURATION + timedelta(days=1)
    if duration > MAX_DURATION:
        raise ValidationError(
            f"{field} must be at most {format_duration(MAX_DURATION)}, got {value!r:.40}",
            field=field,
        )
    return duration


# ------------------------------------------------------------------ values
@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a plan: a state change, then a hold while the guards watch.

    In a plan body, ``tenants_on`` lists tenants *added* (``change.tenants_on_add``).
    """

    change: StateChange
    hold: timedelta = timedelta(0)

    def describe(self) -> str:
        """A short human form, e.g. ``rollout=25 tenants_on+=[internal] enabled=true``."""
        parts = _describe_change(self.change)
        return " ".join(parts) if parts else "no change"


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition checked during every hold: ``metric`` must stay at or below ``max``."""

    metric: str
    max: float
    window: timedelta | None = None
    per: str | None = None

    @property
    def flag(self) -> str:
        return self.metric.rpartition(".")[0]

    @property
    def counters(self) -> tuple[str, str | None]:
        """(numerator counter, denominator counter or None for a raw count)."""
        name = self.metric.rpartition(".")[2]
        if name in RATES:
            numerator, denominator = RATES[name]
            return numerator, self.per or denominator
        if name.endswith("_rate"):
            return name.removesuffix("_rate"), self.per or "reads"
        return name, None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"metric": self.metric, "max": self.max}
        if self.window is not None:
            data["window"] = format_duration(self.window)
        if self.per is not None:
            data["per"] = self.per
        return data


@dataclass(frozen=True, slots=True)
class PlanSpec:
    """What a person asked for: a plan body or a schedule body, validated."""

    kind: PlanKind
    environment: str
    stages: tuple[Stage, ...]
    guards: tuple[Guard, ...] = ()
    start_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """A stored plan. ``stage`` is the index of the last applied stage (None before the
    first); ``stage_started_at`` is when it was applied or its hold last restarted.
    ``version`` grows by one with every change of the plan row."""

    id: int
    kind: PlanKind
    flag: str
    environment: str
    stages: tuple[Stage, ...]
    guards: tuple[Guard, ...]
    status: PlanStatus
    stage: int | None
    stage_started_at: datetime | None
    start_at: datetime | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    reason: str | None = None
    version: int = 0

    @property
    def spec(self) -> PlanSpec:
        return PlanSpec(self.kind, self.environment, self.stages, self.guards, self.start_at)

    @property
    def actor(self) -> str:
        return plan_actor(self.id)

    def to_dict(self) -> dict[str, Any]:
        """The API form; ``next_at`` is when the scheduler will next act on its own."""
        due = next_due(self)
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "flag": self.flag,
            "status": self.status.value,
            "stage": self.stage,
            "stage_started_at": _iso(self.stage_started_at),
            "next_at": _iso(due),
            "reason": self.reason,
            "created_at": _iso(self.created_at),
            "created_by": self.created_by,
            "updated_at": _iso(self.updated_at),
            "version": self.version,
        }
        data.update(spec_to_dict(self.spec))
        return data


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ------------------------------------------------------------------ parsing
def _mapping(data: object, field: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValidationError(f"{field} must be an object", field=field)
    return data


def _no_unknown(data: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            field = f"{prefix}.{key}" if prefix else (str(key) or "body")
            raise ValidationError(
                f"unknown field {key!r}; expected {', '.join(sorted(allowed))}", field=field
            )


def _bool(value: object, field: str) -> bool:
    if type(value) is not bool:
        raise ValidationError(f"{field} must be true or false, got {value!r:.40}", field=field)
    return value


def _tenants(value: object, field: str) -> frozenset[str]:
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"{field} must be a list of tenant ids", field=field)
    return validate_tenants(value, field)


def parse_stage(data: object, field: str, *, last: bool) -> Stage:
    """One plan stage: any of ``rollout``, ``tenants_on`` (added), ``enabled``, and ``hold``
    (required except on the last stage, where it defaults to 0: the final bake time)."""
    data = _mapping(data, field)
    _no_unknown(data, _STAGE_FIELDS, field)
    rollout = data.get("rollout")
    if rollout is not None:
        rollout = validate_rollout(rollout, f"{field}.rollout")
    enabled = data.get("enabled")
    if enabled is not None:
        enabled = _bool(enabled, f"{field}.enabled")
    added = _tenants(data.get("tenants_on") or [], f"{field}.tenants_on")
    split = data.get("split")
    if split is not None:
        split = parse_split(split, f"{field}.split")
    if rollout is None and enabled is None and not added and not split:
        # null values and an empty tenant list change nothing: a stage must change something.
        raise ValidationError(
            f"{field} must set at least one of rollout, tenants_on, enabled, split", field=field
        )
    if "hold" in data:
        hold = _duration(data["hold"], f"{field}.hold")
    elif last:
        hold = timedelta(0)
    else:
        raise ValidationError(f"{field}.hold is required (e.g. '30m')", field=f"{field}.hold")
    change = StateChange(enabled=enabled, rollout=rollout, tenants_on_add=added, split=split)
    return Stage(change, hold)


def _variant_names(raw: object, *, values: bool = False) -> list[str]:
    """The well-formed variant names a split (``values=False``) or a pin map
    (``values=True``) mentions, in any of their accepted forms: the shape check needs
    them before the flag's declared variants are at hand."""
    if isinstance(raw, Mapping):
        items: list[Any] = list(raw.values() if values else raw.keys())
    elif isinstance(raw, (list, tuple)):
        items = []
        for item in raw:
            if isinstance(item, Mapping):
                items.append(item.get("variant"))
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                items.append(item[1] if values else item[0])
    else:
        items = []
    return [n for n in items if isinstance(n, str) and VARIANT_NAME.fullmatch(n)]


def parse_split(raw: object, field: str) -> tuple[tuple[str, int], ...]:
    """A split's shape (``{variant: weight}`` or ``[{"variant", "weight"}]``): weights
    0..1000 summing to 1000, each variant once and well named (else ``ValidationError``
    naming e.g. ``split.1.variant``). Whether the flag declares those variants is checked
    when the change applies (``FlagState.check_variants``)."""
    names = _variant_names(raw)
    return validate_split(raw, names, field)


def parse_guard(data: object, field: str) -> Guard:
    """One guard: ``metric`` (``<flag>.<counter>``), ``max`` (>= 0), ``window``?, ``per``?."""
    data = _mapping(data, field)
    _no_unknown(data, _GUARD_FIELDS, field)
    metric = data.get("metric")
    if not isinstance(metric, str) or "." not in metric:
        raise ValidationError(
            f"{field}.metric must be '<flag>.<counter>', like 'auth.cache.l2.corrupt_rate'",
            field=f"{field}.metric",
        )
    flag, _, counter = metric.rpartition(".")
    validate_flag_key(flag, f"{field}.metric")
    if not _COUNTER.fullmatch(counter):
        raise ValidationError(
            f"{field}.metric counter must match {_COUNTER.pattern}, got {counter!r:.40}",
            field=f"{field}.metric",
        )
    if "max" not in data:
        raise ValidationError(f"{field}.max is required", field=f"{field}.max")
    limit = data["max"]
    try:
        limit = float(limit) if not isinstance(limit, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        limit = math.nan
    if isinstance(data["max"], str) or not math.isfinite(limit):
        raise ValidationError(f"{field}.max must be a finite number", field=f"{field}.max")
    if limit < 0:
        raise ValidationError(f"{field}.max must not be negative", field=f"{field}.max")
    window = data.get("window")
    per = data.get("per")
    if per is not None and (not isinstance(per, str) or not _COUNTER.fullmatch(per)):
        raise ValidationError(f"{field}.per must be a counter name", field=f"{field}.per")
    if per is not None and not counter.endswith("_rate"):
        raise ValidationError(f"{field}.per only applies to a '_rate' metric", field=f"{field}.per")
    return Guard(
        metric=metric,
        max=limit,
        window=None if window is None else _duration(window, f"{field}.window"),
        per=per,
    )


def _list(data: Mapping[str, Any], key: str, *, required: bool, most: int) -> Sequence[Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise ValidationError(f"{key} is required", field=key)
        return ()
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"{key} must be a list", field=key)
    if required and not value:
        raise ValidationError(f"{key} must hold at least one entry", field=key)
    if len(value) > most:
        raise ValidationError(f"{key} holds {len(value)} entries; at most {most}", field=key)
    return value


def _check_upward(stages: Sequence[Stage]) -> None:
    """A plan only widens exposure: rollout never goes down, enabled never goes false."""
    rollout: int | None = None
    enabled: bool | None = None
    for i, stage in enumerate(stages):
        change = stage.change
        if change.rollout is not None:
            if rollout is not None and change.rollout < rollout:
                raise InvalidRuleError(
                    f"stages.{i}.rollout goes down from {rollout} to {change.rollout}; "
                    "a plan only moves up (kill the flag or abort the plan to go back)",
                    field=f"stages.{i}.rollout",
                )
            rollout = change.rollout
        if change.enabled is not None:
            if enabled is True and change.enabled is False:
                raise InvalidRuleError(
                    f"stages.{i}.enabled turns the flag off after an earlier stage turned it "
                    "on; a plan only moves up",
                    field=f"stages.{i}.enabled",
                )
            enabled = change.enabled


def _check_split_one_way(stages: Sequence[Stage]) -> None:
    """A plan stepping a split moves it one way, e.g. 0 -> 100 -> 500 -> 1000 of the new
    variant. From one split stage to the next (a variant a split leaves out weighs 0):
    a variant whose weight went up at an earlier step never goes down, one whose weight
    went down never goes up; the variants weighing something at both steps keep their
    order (a reorder re-deals tenants between them with no weight changed); and no
    stage drops the split (``split: []``, everyone back to ``on_variant``). Raises
    ``InvalidRuleError`` naming the stage's ``split``."""
    split_stages = [
        (i, stage.change.split) for i, stage in enumerate(stages) if stage.change.split is not None
    ]
    if len(split_stages) < 2:
        return
    moved: dict[str, tuple[int, int]] = {}  # variant -> (+1 up / -1 down, stage index)
    previous: tuple[int, tuple[tuple[str, int], ...]] | None = None
    for i, split in split_stages:
        field = f"stages.{i}.split"
        if not split:
            raise InvalidRuleError(
                f"{field} drops the split the plan steps; a plan moves a split one way "
                "(end it with the new variant at 1000)",
                field=field,
            )
        if previous is not None:
            j, before = previous
            was, now = dict(before), dict(split)
            kept_before = [n for n, w in before if w and now.get(n)]
            kept_after = [n for n, w in split if w and was.get(n)]
            if kept_before != kept_after:
                raise InvalidRuleError(
                    f"{field} orders {', '.join(kept_after)} unlike stages.{j}.split "
                    f"({', '.join(kept_before)}); reordering a split re-deals tenants "
                    "between its variants",
                    field=field,
                )
            names = [*was, *(n for n in now if n not in was)]
            steps = {n: (was.get(n, 0), now.get(n, 0)) for n in names}
            turned = [
                (name, old, new)
                for name, (old, new) in steps.items()
                if old != new and moved.get(name, (0,))[0] == (-1 if new > old else 1)
            ]
            if turned:
                # Name a variant taken back down first: the raised "new" variant of a
                # two-variant split, as a person reads the plan.
                name, old, new = min(turned, key=lambda t: t[2] > t[1])
                way = "down" if new < old else "up"
                raise InvalidRuleError(
                    f"{field} takes {name} {way} from {old} to {new} after "
                    f"stages.{moved[name][1]}.split took it {'up' if new < old else 'down'}; "
                    "a plan moves a split one way (kill the flag or abort the plan to go back)",
                    field=field,
                )
            for name, (old, new) in steps.items():
                if old != new:
                    moved[name] = (1 if new > old else -1, i)
        previous = (i, split)


def parse_plan(data: object) -> PlanSpec:
    """Validate a plan body (JSON or YAML-loaded).

    ``{"environment", "stages": [{"rollout", "tenants_on", "enabled", "hold"}, ...],
    "guards": [{"metric", "max", "window"?, "per"?}], "start_at"?}``.
    ``start_at`` is an absolute ISO-8601 time (UTC when it names no zone).
    Raises ``ValidationError`` (``InvalidRuleError`` for a plan that moves down, or
    steps a split both ways: ``_check_split_one_way``) whose ``field`` names the
    offending part, e.g. ``stages.2.rollout``.
    """
    data = _mapping(data, "body")
    _no_unknown(data, _PLAN_FIELDS, "")
    if "environment" not in data:
        raise ValidationError("environment is required", field="environment")
    environment = validate_environment_name(data["environment"])
    raw_stages = _list(data, "stages", required=True, most=MAX_STAGES)
    stages = tuple(
        parse_stage(s, f"stages.{i}", last=i == len(raw_stages) - 1)
        for i, s in enumerate(raw_stages)
    )
    _check_upward(stages)
    _check_split_one_way(stages)
    raw_guards = _list(data, "guards", required=False, most=MAX_GUARDS)
    guards = tuple(parse_guard(g, f"guards.{i}") for i, g in enumerate(raw_guards))
    start_at = data.get("start_at")
    return PlanSpec(
        PlanKind.PLAN,
        environment,
        stages,
        guards,
        None if start_at is None else _instant(start_at, "start_at"),
    )


def _instant(value: object, field: str) -> datetime:
    """An absolute ISO-8601 time (UTC when it names no zone); YAML may hand a datetime."""
    parsed: datetime | None = value if isinstance(value, datetime) else None
    if isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is not None:
        try:
            utc = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
        except (OverflowError, ValueError):
            utc = None
        if utc is not None and utc.year >= 2000 and utc.year <= 9000:
            return utc
    raise ValidationError(
        f"{field} must be an ISO-8601 time (years 2000 to 9000) like '2026-12-01T02:00:00Z', "
        f"got {value!r:.40}",
        field=field,
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def parse_change(data: object, field: str = "change", *, allow_empty: bool = False) -> StateChange:
    """A state change as ``PATCH .../environments/{env}`` takes it (tenant lists replace,
    ``*_add`` / ``*_remove`` edit): the one parser of a state change, for that route, the
    CLI and scheduled changes. Null values are no change. Raises ``ValidationError``
    naming ``<field>.<key>`` (just ``<key>`` when ``field`` is empty); an empty change
    too, unless ``allow_empty``."""
    data = _mapping(data, field or "body")
    _no_unknown(data, _CHANGE_FIELDS, field)
    enabled = data.get("enabled")
    rollout = data.get("rollout")
    sets: dict[str, Any] = {}
    for name in _CHANGE_SETS:
        value = data.get(name)
        if value is not None:
            sets[name] = _tenants(value, _join(field, name))
    for name in ("off_variant", "on_variant"):
        value = data.get(name)
        if value is not None:
            if not isinstance(value, str) or not VARIANT_NAME.fullmatch(value):
                raise ValidationError(
                    f"{_join(field, name)} must be a variant name, got {value!r:.60}",
                    field=_join(field, name),
                )
            sets[name] = value
    if data.get("split") is not None:
        sets["split"] = parse_split(data["split"], _join(field, "split"))
    pins = data.get("tenant_variants")
    if pins is not None:
        sets["tenant_variants"] = validate_tenant_variants(
            pins, _variant_names(pins, values=True), _join(field, "tenant_variants")
        )
    change = StateChange(
        enabled=None if enabled is None else _bool(enabled, _join(field, "enabled")),
        rollout=None if rollout is None else validate_rollout(rollout, _join(field, "rollout")),
        **sets,
    )
    if change.is_empty() and not allow_empty:
        raise ValidationError(
            f"{field or 'body'} must change at least one field", field=field or "body"
        )
    return change


def parse_schedule(data: object, *, now: datetime | None = None) -> PlanSpec:
    """Validate a scheduled change: ``{"environment", "at", "change": {...}}``.

    With ``now``, an ``at`` more than ``PAST_GRACE`` ago is refused (field ``at``).
    """
    data = _mapping(data, "body")
    _no_unknown(data, _SCHEDULE_FIELDS, "")
    if "environment" not in data:
        raise ValidationError("environment is required", field="environment")
    environment = validate_environment_name(data["environment"])
    if "at" not in data:
        raise ValidationError("at is required (an ISO-8601 time)", field="at")
    at = _instant(data["at"], "at")
    if now is not None and at < now - PAST_GRACE:
        raise ValidationError(f"at is in the past ({at.isoformat()})", field="at")
    if "change" not in data:
        raise ValidationError("change is required", field="change")
    change = parse_change(data["change"])
    return PlanSpec(PlanKind.SCHEDULE, environment, (Stage(change),), (), at)


def change_to_dict(change: StateChange) -> dict[str, Any]:
    """The fields a change sets, in ``parse_change`` form (sorted tenant lists)."""
    data: dict[str, Any] = {}
    if change.enabled is not None:
        data["enabled"] = change.enabled
    if change.rollout is not None:
        data["rollout"] = change.rollout
    for name in _CHANGE_SETS:
        value = getattr(change, name)
        if value is not None and (value or name in ("tenants_on", "tenants_off")):
            data[name] = sorted(value)
    for name in ("off_variant", "on_variant"):
        if getattr(change, name) is not None:
            data[name] = getattr(change, name)
    if change.split is not None:
        data["split"] = [{"variant": n, "weight": w} for n, w in change.split]
    if change.tenant_variants is not None:
        data["tenant_variants"] = dict(change.tenant_variants)
    return data


def spec_to_dict(spec: PlanSpec) -> dict[str, Any]:
    """The body form of a spec: ``parse_plan`` / ``parse_schedule`` read it back unchanged."""
    if spec.kind is PlanKind.SCHEDULE:
        return {
            "environment": spec.environment,
            "at": _iso(spec.start_at),
            "change": change_to_dict(spec.stages[0].change),
        }
    stages = []
    for stage in spec.stages:
        item: dict[str, Any] = {}
        if stage.change.rollout is not None:
            item["rollout"] = stage.change.rollout
        if stage.change.tenants_on_add:
            item["tenants_on"] = sorted(stage.change.tenants_on_add)
        if stage.change.enabled is not None:
            item["enabled"] = stage.change.enabled
        if stage.change.split is not None:
            item["split"] = [{"variant": n, "weight": w} for n, w in stage.change.split]
        item["hold"] = format_duration(stage.hold)
        stages.append(item)
    data: dict[str, Any] = {
        "environment": spec.environment,
        "stages": stages,
        "guards": [g.to_dict() for g in spec.guards],
    }
    if spec.start_at is not None:
        data["start_at"] = _iso(spec.start_at)
    return data


def _describe_change(change: StateChange) -> list[str]:
    parts = []
    if change.rollout is not None:
        parts.append(f"rollout={change.rollout}")
    if change.tenants_on is not None:
        parts.append(f"tenants_on=[{','.join(sorted(change.tenants_on))}]")
    if change.tenants_on_add:
        parts.append(f"tenants_on+=[{','.join(sorted(change.tenants_on_add))}]")
    if change.tenants_on_remove:
        parts.append(f"tenants_on-=[{','.join(sorted(change.tenants_on_remove))}]")
    if change.tenants_off is not None:
        parts.append(f"tenants_off=[{','.join(sorted(change.tenants_off))}]")
    if change.tenants_off_add:
        parts.append(f"tenants_off+=[{','.join(sorted(change.tenants_off_add))}]")
    if change.tenants_off_remove:
        parts.append(f"tenants_off-=[{','.join(sorted(change.tenants_off_remove))}]")
    if change.enabled is not None:
        parts.append(f"enabled={'true' if change.enabled else 'false'}")
    for name in ("off_variant", "on_variant"):
        if getattr(change, name) is not None:
            parts.append(f"{name}={getattr(change, name)}")
    if change.split is not None:
        parts.append("split=" + (",".join(f"{n}={w}" for n, w in change.split) or "none"))
    if change.tenant_variants is not None:
        pins = ",".join(f"{t}={n}" for t, n in change.tenant_variants[:3])
        more = len(change.tenant_variants) - 3
        parts.append(f"tenant_variants=[{pins}{f',+{more}' if more > 0 else ''}]")
    return parts


# ------------------------------------------------------------------ guards
@dataclass(frozen=True, slots=True)
class Reading:
    """A guard's measured value over its window. ``value`` is None when a rate has
    no denominator yet (no data: never a breach)."""

    guard: Guard
    value: float | None
    count: float
    total: float | None
    since: datetime

    @property
    def breached(self) -> bool:
        return self.value is not None and self.value > self.guard.max

    def describe(self) -> str:
        """e.g. ``auth.cache.l2.corrupt_rate=0.05 (5 corrupt_reads / 100 reads) > max 0.01``."""
        numerator, denominator = self.guard.counters
        if denominator is None:
            measured = f"{self.guard.metric}={self.count:g}"
        elif self.value is None:
            measured = f"{self.guard.metric}=n/a (0 {denominator})"
        else:
            measured = (
                f"{self.guard.metric}={self.value:.4g} "
                f"({self.count:g} {numerator} / {self.total:g} {denominator})"
            )
        op = ">" if self.breached else "<="
        return f"{measured} {op} max {self.guard.max:g} since {self.since.isoformat()}"

    def to_dict(self) -> dict[str, Any]:
        numerator, denominator = self.guard.counters
        return {
            "metric": self.guard.metric,
            "max": self.guard.max,
            "value": self.value,
            numerator: self.count,
            **({denominator: self.total} if denominator is not None else {}),
            "since": self.since.isoformat(),
            "breached": self.breached,
        }


def guard_since(plan: Plan, guard: Guard, now: datetime) -> datetime:
    """Start of ``guard``'s window: ``now - window``, else the current hold's start."""
    if guard.window is not None:
        return now - guard.window
    return plan.stage_started_at or now


def measure(guard: Guard, totals: Mapping[str, float], since: datetime) -> Reading:
    """The guard's value from counter sums (as ``MetricsSource.counter_totals`` returns)."""
    numerator, denominator = guard.counters
    count = float(totals.get(numerator, 0.0))
    if denominator is None:
        return Reading(guard, count, count, None, since)
    total = float(totals.get(denominator, 0.0))
    return Reading(guard, count / total if total > 0 else None, count, total, since)


# ------------------------------------------------------------------ state machine
@dataclass(frozen=True, slots=True)
class Observation:
    """What the scheduler saw of the world for one plan: guard readings and the flag."""

    readings: tuple[Reading, ...] = ()
    killed: bool = False
    kill_reason: str | None = None
    killed_by: str | None = None
    archived: bool = False


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do now; ``until`` is when something might be (None: only a person)."""

    until: datetime | None


@dataclass(frozen=True, slots=True)
class ApplyStage:
    """Apply ``stages[index]`` and start its hold."""

    index: int
    change: StateChange
    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    reason: str


@dataclass(frozen=True, slots=True)
class RollBack:
    """Mark the plan rolled back; ``kill`` the flag unless someone already did.

    A plan stepping a split rolls back to the split of its previous split stage
    instead of killing: ``restore`` is that change and ``to_stage`` that stage's
    index, which the plan is then at (a resume holds it again, then steps up again).
    """

    reason: str
    readings: tuple[Reading, ...] = ()
    kill: bool = True
    restore: StateChange | None = None
    to_stage: int | None = None


@dataclass(frozen=True, slots=True)
class Stop:
    """Abort the plan on its own (its flag was archived)."""

    reason: str


Step = Wait | ApplyStage | Complete | RollBack | Stop


def next_due(plan: Plan) -> datetime | None:
    """When the scheduler will next act on ``plan`` unless a guard fires (None: never)."""
    if plan.status is PlanStatus.PENDING:
        return plan.start_at or plan.created_at
    if plan.status is PlanStatus.RUNNING and plan.stage is not None:
        started = plan.stage_started_at or plan.updated_at
        return started + plan.stages[plan.stage].hold
    return None


def _apply(plan: Plan, index: int, why: str) -> ApplyStage:
    stage = plan.stages[index]
    reason = (
        f"plan {plan.id}: stages.{index} {stage.describe()} "
        f"(stage {index + 1} of {len(plan.stages)}); {why}"
    )
    return ApplyStage(index, stage.change, reason)


def next_action(plan: Plan, now: datetime, observed: Observation) -> Step:
    """What the scheduler should do with ``plan`` at ``now``, given ``observed``.

    Pure and total: the same inputs give the same step. For a pending plan, the
    first stage once ``start_at`` has come; for a running one, in this order: roll
    back if the flag was killed by anyone, roll back if any guard reading breaches
    (all breaching readings in the reason), advance (or complete after the last
    stage) once the hold has elapsed, else wait. Paused, rolled-back and final
    plans wait for a person. Schedules have no guards and ignore kills.
    """
    if not plan.status.active:
        return Wait(None)
    if observed.archived:
        return Stop(f"plan {plan.id}: flag {plan.flag!r} was archived")
    guarded = plan.kind is PlanKind.PLAN
    if guarded and observed.killed:
        return RollBack(
            f"plan {plan.id}: flag {plan.flag!r} was killed in {plan.environment!r} "
            f"by {observed.killed_by or 'someone'}: {observed.kill_reason or 'no reason given'}",
            kill=False,
        )
    if plan.status is PlanStatus.PENDING or plan.stage is None:
        if plan.start_at is not None and now < plan.start_at:
            return Wait(plan.start_at)
        return _apply(plan, 0, "start")
    breaches = tuple(r for r in observed.readings if r.breached) if guarded else ()
    if breaches:
        stage = plan.stages[plan.stage]
        reason = (
            f"plan {plan.id}: guard breached during stages.{plan.stage} ({stage.describe()}): "
            + "; ".join(r.describe() for r in breaches)
        )
        previous = previous_split(plan)
        if previous is None:
            return RollBack(reason, readings=breaches)
        index, split = previous
        return RollBack(
            f"{reason}; back to the split of stages.{index}",
            readings=breaches,
            kill=False,
            restore=StateChange(split=split),
            to_stage=index,
        )
    due = next_due(plan)
    if due is not None and now < due:
        return Wait(due)
    if plan.stage + 1 >= len(plan.stages):
        return Complete(f"plan {plan.id}: all {len(plan.stages)} stages applied and held")
    return _apply(
        plan,
        plan.stage + 1,
        f"stages.{plan.stage} held {format_duration(plan.stages[plan.stage].hold)}",
    )


def previous_split(plan: Plan) -> tuple[int, tuple[tuple[str, int], ...]] | None:
    """Where a guard breach takes a plan stepping a split: ``(index, split)`` of the
    latest stage before the current one that set a split, when the current stage sets
    one too. None otherwise (not a split stage, or the first one): the breach kills
    the flag, as for any plan, and a typed flag then serves its off variant."""
    if plan.stage is None or plan.stages[plan.stage].change.split is None:
        return None
    for index in range(plan.stage - 1, -1, -1):
        split = plan.stages[index].change.split
        if split is not None:
            return index, split
    return None


# ------------------------------------------------------------------ person-driven transitions
def pause(plan: Plan, now: datetime) -> Plan:
    """Stop a pending or running plan where it is. Raises ``PlanStateError`` otherwise."""
    if not plan.status.active:
        raise PlanStateError(
            f"plan {plan.id} is {plan.status.value}; only a pending or running plan can be paused",
            field="status",
        )
    return replace(plan, status=PlanStatus.PAUSED, updated_at=now)


def resume(plan: Plan, now: datetime, *, killed: bool) -> Plan:
    """Continue a paused or rolled-back plan; the current stage's hold starts again.

    A rolled-back plan can only resume once its flag is no longer killed. Raises
    ``PlanStateError``.
    """
    if plan.status not in (PlanStatus.PAUSED, PlanStatus.ROLLED_BACK):
        raise PlanStateError(
            f"plan {plan.id} is {plan.status.value}; only a paused or rolled-back plan "
            "can be resumed",
            field="status",
        )
    if killed and plan.kind is PlanKind.PLAN:
        raise PlanStateError(
            f"flag {plan.flag!r} is killed in {plan.environment!r}; unkill it before resuming "
            f"plan {plan.id}",
            field="status",
        )
    status = PlanStatus.PENDING if plan.stage is None else PlanStatus.RUNNING
    started = None if plan.stage is None else now
    return replace(plan, status=status, stage_started_at=started, updated_at=now, reason=None)


def abort(plan: Plan, now: datetime, reason: str) -> Plan:
    """End a plan for good, leaving the flag as it is. Raises ``PlanStateError`` when final."""
    if plan.status.final:
        raise PlanStateError(f"plan {plan.id} is already {plan.status.value}", field="status")
    return replace(plan, status=PlanStatus.ABORTED, updated_at=now, reason=reason)


def advance(plan: Plan, actor: str) -> ApplyStage | Complete:
    """The step a person's ``advance`` takes now, skipping the rest of the hold.

    Allowed for pending, running and paused plans. Raises ``PlanStateError``.
    """
    if plan.status not in (PlanStatus.PENDING, PlanStatus.RUNNING, PlanStatus.PAUSED):
        raise PlanStateError(
            f"plan {plan.id} is {plan.status.value}; only a pending, running or paused plan "
            "can be advanced",
            field="status",
        )
    index = 0 if plan.stage is None else plan.stage + 1
    if index >= len(plan.stages):
        return Complete(f"plan {plan.id}: completed early by {actor}")
    return _apply(plan, index, f"advanced by {actor}")
