"""Frozen values of the flag model, and the validation of their names.

Nothing here does I/O. ``FlagState.to_dict`` / ``FlagState.from_dict`` define the
JSON form of a state used by the admin API, the SDK snapshot and the history.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from flags.errors import ValidationError

ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
FLAG_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
MAX_TENANT_LENGTH = 200
MAX_TENANT_LIST = 10_000
MAX_STRING_VALUE = 8 * 1024  # bytes of UTF-8
MAX_JSON_VALUE = 32 * 1024  # bytes of compact JSON
MAX_VARIANTS = 100
SPLIT_TOTAL = 1000
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_ENVIRONMENTS = ("development", "staging", "beta", "production")


class FlagKind(StrEnum):
    RELEASE = "release"
    OPERATIONAL = "operational"
    KILL_SWITCH = "kill-switch"
    PERMISSION = "permission"


class FlagType(StrEnum):
    """What a flag serves; fixed when the flag is created."""

    BOOLEAN = "boolean"
    STRING = "string"
    NUMBER = "number"
    JSON = "json"


class Role(StrEnum):
    """Token roles. ``reader`` < ``operator`` < ``editor`` < ``admin``, each including
    the rights of the one before; ``client`` (SDK endpoints only) and ``guard`` (kill,
    nothing else) stand apart."""

    CLIENT = "client"
    READER = "reader"
    OPERATOR = "operator"
    EDITOR = "editor"
    ADMIN = "admin"
    GUARD = "guard"


class Reason(StrEnum):
    """Why an evaluation came out the way it did."""

    KILLED = "killed"
    MISSING = "missing"
    DISABLED = "disabled"
    TENANT_OFF = "tenant_off"
    TENANT_ON = "tenant_on"
    ROLLOUT = "rollout"
    PINNED = "pinned"
    SPLIT = "split"
    DEFAULT = "default"
    ERROR = "error"


class Action(StrEnum):
    """History action names (a public contract: filters and tools use them)."""

    FLAG_CREATE = "flag.create"
    FLAG_UPDATE = "flag.update"
    FLAG_ARCHIVE = "flag.archive"
    STATE_UPDATE = "state.update"
    KILL = "kill"
    UNKILL = "unkill"
    ENVIRONMENT_CREATE = "environment.create"
    TOKEN_CREATE = "token.create"
    TOKEN_REVOKE = "token.revoke"
    USER_CREATE = "user.create"  # console users (#15)
    USER_DISABLE = "user.disable"
    USER_ENABLE = "user.enable"


def validate_environment_name(name: object, field_name: str = "environment") -> str:
    """Return ``name`` if it is a valid environment name, else raise ``ValidationError``."""
    if not isinstance(name, str) or not ENVIRONMENT_NAME.fullmatch(name):
        raise ValidationError(
            f"{field_name} must match {ENVIRONMENT_NAME.pattern}, got {name!r}", field=field_name
        )
    return name


def validate_flag_key(key: object, field_name: str = "key") -> str:
    """Return ``key`` if it is a valid flag key, else raise ``ValidationError``."""
    if not isinstance(key, str) or not FLAG_KEY.fullmatch(key):
        raise ValidationError(
            f"{field_name} must match {FLAG_KEY.pattern}, got {key!r}", field=field_name
        )
    return key


MAX_FLAG_PATTERNS = 50
FLAG_PATTERN = re.compile(r"[a-z0-9_.\-*?\[\]!]{1,100}")


def validate_flag_patterns(patterns: object, field_name: str = "flags") -> tuple[str, ...]:
    """Return ``patterns`` as a sorted, de-duplicated tuple if it is a non-empty list of
    at most 50 fnmatch patterns over flag-key characters (``*``, ``?``, ``[...]``), each
    of at most 100 characters with balanced brackets; else raise ``ValidationError``."""
    if isinstance(patterns, str) or not isinstance(patterns, (list, tuple)):
        raise ValidationError(f"{field_name} must be a list of patterns", field=field_name)
    if not 0 < len(patterns) <= MAX_FLAG_PATTERNS:
        raise ValidationError(
            f"{field_name} must hold 1 to {MAX_FLAG_PATTERNS} patterns", field=field_name
        )
    for pattern in patterns:
        if (
            not isinstance(pattern, str)
            or not FLAG_PATTERN.fullmatch(pattern)
            or pattern.count("[") != pattern.count("]")
        ):
            raise ValidationError(
                f"{field_name} holds {pattern!r:.80}: a pattern is 1 to 100 flag-key characters "
                "and the wildcards * ? [...]",
                field=field_name,
            )
    return tuple(sorted(set(patterns)))


def is_valid_tenant(tenant: object) -> bool:
    """True for a non-empty ``str`` of at most 200 characters with no control characters."""
    if type(tenant) is not str or not 0 < len(tenant) <= MAX_TENANT_LENGTH:
        return False
    if tenant.isprintable():
        return True
    return not any(unicodedata.category(ch) == "Cc" for ch in tenant)


def validate_tenant(tenant: object, field_name: str = "tenant") -> str:
    if not is_valid_tenant(tenant):
        raise ValidationError(
            f"{field_name} must be a non-empty string of at most {MAX_TENANT_LENGTH} characters "
            f"without control characters, got {tenant!r:.80}",
            field=field_name,
        )
    return tenant  # type: ignore[return-value]


def validate_tenants(tenants: Iterable[object], field_name: str) -> frozenset[str]:
    """Validate a tenant list: at most 10,000 valid tenant ids."""
    items = list(tenants)
    if len(items) > MAX_TENANT_LIST:
        raise ValidationError(
            f"{field_name} holds {len(items)} tenants; at most {MAX_TENANT_LIST} are allowed",
            field=field_name,
        )
    return frozenset(validate_tenant(t, field_name) for t in items)


def validate_rollout(rollout: object, field_name: str = "rollout") -> int:
    if type(rollout) is not int or not 0 <= rollout <= 100:
        raise ValidationError(
            f"{field_name} must be an integer from 0 to 100, got {rollout!r}", field=field_name
        )
    return rollout


def validate_value(flag_type: FlagType, value: object, field_name: str = "value") -> Any:
    """Return ``value`` if a flag of ``flag_type`` may serve it, else raise ``ValidationError``.

    boolean: ``True``/``False``; string: a ``str`` of at most 8 KB of UTF-8; number:
    a finite ``int`` or ``float`` (not ``bool``); json: any JSON value (objects with
    string keys, arrays, strings, finite numbers, booleans, null) of at most 32 KB
    serialised compactly.
    """
    if flag_type is FlagType.BOOLEAN:
        if type(value) is not bool:
            raise ValidationError(
                f"{field_name} must be a boolean, got {value!r:.60}", field=field_name
            )
        return value
    if flag_type is FlagType.STRING:
        if not isinstance(value, str):
            raise ValidationError(
                f"{field_name} must be a string, got {value!r:.60}", field=field_name
            )
        if len(value) > MAX_STRING_VALUE // 4 and len(value.encode()) > MAX_STRING_VALUE:
            raise ValidationError(
                f"{field_name} is longer than {MAX_STRING_VALUE} bytes of UTF-8", field=field_name
            )
        return value
    if flag_type is FlagType.NUMBER:
        try:
            finite = type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond every float: not a number an SDK can serve
            finite = False
        if not finite:
            raise ValidationError(
                f"{field_name} must be a finite number, got {value!r:.60}", field=field_name
            )
        return value
    if flag_type is FlagType.JSON:
        try:
            text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"{field_name} is not a JSON value: {exc}", field=field_name
            ) from exc
        if json.loads(text) != value:
            # json.dumps turns int keys into strings and tuples into lists: not JSON as given.
            raise ValidationError(
                f"{field_name} is not a JSON value (object keys must be strings, arrays lists)",
                field=field_name,
            )
        if len(text.encode()) > MAX_JSON_VALUE:
            raise ValidationError(
                f"{field_name} is longer than {MAX_JSON_VALUE} bytes serialised", field=field_name
            )
        return value
    raise ValidationError(f"unknown flag type {flag_type!r}", field="type")


def validate_flag_type(value: object, field_name: str = "type") -> FlagType:
    """Return the ``FlagType`` named by ``value``, else raise ``ValidationError``."""
    try:
        return FlagType(value)
    except ValueError:
        raise ValidationError(
            f"{field_name} must be one of {', '.join(FlagType)}, got {value!r:.40}",
            field=field_name,
        ) from None


@dataclass(frozen=True, slots=True)
class Variant:
    """A named value a flag can serve. ``value`` matches the flag's type.

    A json value is shared by every evaluation that serves it: treat it as read-only.
    """

    name: str
    value: Any

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value}


BOOLEAN_VARIANTS = (Variant("on", True), Variant("off", False))


def validate_variants(
    flag_type: FlagType, raw: object, field_name: str = "variants"
) -> tuple[Variant, ...]:
    """Parse a variant list (``[{"name": ..., "value": ...}]`` or ``Variant`` objects).

    Names match ``VARIANT_NAME`` and are unique; values pass ``validate_value``;
    at most 100 variants. A boolean flag's variants are always ``on`` (true) and
    ``off`` (false): an empty list means those, anything else is refused. Raises
    ``ValidationError`` naming the field, e.g. ``variants.1.value``.
    """
    if raw is None:
        raw = ()
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Iterable):
        raise ValidationError(f"{field_name} must be a list of variants", field=field_name)
    items = list(raw)
    if len(items) > MAX_VARIANTS:
        raise ValidationError(
            f"{field_name} holds {len(items)} variants; at most {MAX_VARIANTS}", field=field_name
        )
    variants: list[Variant] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"{field_name}.{i}"
        if isinstance(item, Variant):
            name, value = item.name, item.value
        elif isinstance(item, Mapping):
            if "value" not in item:
                raise ValidationError(f"{where}.value is required", field=f"{where}.value")
            name, value = item.get("name"), item["value"]
        else:
            raise ValidationError(f"{where} must be an object with name and value", field=where)
        if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
            raise ValidationError(
                f"{where}.name must match {VARIANT_NAME.pattern}, got {name!r:.60}",
                field=f"{where}.name",
            )
        if name in seen:
            raise ValidationError(f"{where}.name {name!r} is declared twice", field=f"{where}.name")
        seen.add(name)
        variants.append(Variant(name, validate_value(flag_type, value, f"{where}.value")))
    if flag_type is FlagType.BOOLEAN:
        if variants and {(v.name, v.value) for v in variants} != {("on", True), ("off", False)}:
            raise ValidationError(
                f"{field_name} of a boolean flag are on (true) and off (false)", field=field_name
            )
        return BOOLEAN_VARIANTS
    if not variants:
        raise ValidationError(
            f"a {flag_type.value} flag needs at least one variant", field=field_name
        )
    return tuple(variants)


def validate_split(
    raw: object, names: Iterable[str], field_name: str = "split"
) -> tuple[tuple[str, int], ...]:
    """Parse a split: ``[{"variant": name, "weight": w}]``, a ``{name: weight}`` mapping or
    ``(name, weight)`` pairs, in order. Weights are integers 0..1000 summing to 1000; each
    variant is declared and appears once. Empty means no split. Raises ``ValidationError``.
    """
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        pairs: list[Any] = list(raw.items())
    elif isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise ValidationError(f"{field_name} must be a list of variant weights", field=field_name)
    else:
        pairs = list(raw)
    known = set(names)
    out: list[tuple[str, int]] = []
    for i, pair in enumerate(pairs):
        where = f"{field_name}.{i}"
        if isinstance(pair, Mapping):
            name, weight = pair.get("variant"), pair.get("weight")
        elif isinstance(pair, (tuple, list)) and len(pair) == 2:
            name, weight = pair
        else:
            raise ValidationError(f"{where} must be an object with variant and weight", field=where)
        if name not in known:
            raise ValidationError(
                f"{where}.variant {name!r:.60} is not a declared variant", field=f"{where}.variant"
            )
        if any(name == n for n, _ in out):
            raise ValidationError(
                f"{where}.variant {name!r} appears twice", field=f"{where}.variant"
            )
        if type(weight) is not int or not 0 <= weight <= SPLIT_TOTAL:
            raise ValidationError(
                f"{where}.weight must be an integer from 0 to {SPLIT_TOTAL}, got {weight!r:.20}",
                field=f"{where}.weight",
            )
        out.append((name, weight))
    if out and sum(w for _, w in out) != SPLIT_TOTAL:
        raise ValidationError(
            f"{field_name} weights sum to {sum(w for _, w in out)}, not {SPLIT_TOTAL}",
            field=field_name,
        )
    return tuple(out)


def validate_tenant_variants(
    raw: object, names: Iterable[str], field_name: str = "tenant_variants"
) -> tuple[tuple[str, str], ...]:
    """Parse pinned tenants (``{tenant: variant}``), at most 10,000, sorted by tenant."""
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        pairs: list[Any] = list(raw.items())
    elif isinstance(raw, (str, bytes)) or not isinstance(raw, Iterable):
        raise ValidationError(f"{field_name} must map tenants to variants", field=field_name)
    else:
        pairs = list(raw)
    if len(pairs) > MAX_TENANT_LIST:
        raise ValidationError(
            f"{field_name} holds {len(pairs)} tenants; at most {MAX_TENANT_LIST}", field=field_name
        )
    known = set(names)
    out: dict[str, str] = {}
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValidationError(f"{field_name} must map tenants to variants", field=field_name)
        tenant, name = pair
        validate_tenant(tenant, field_name)
        if name not in known:
            raise ValidationError(
                f"{field_name}.{tenant} {name!r:.60} is not a declared variant",
                field=f"{field_name}.{tenant}",
            )
        out[tenant] = name
    return tuple(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class Environment:
    name: str
    created_at: datetime
    version: int = 0


@dataclass(frozen=True, slots=True)
class Flag:
    """A flag's environment-independent metadata."""

    key: str
    description: str = ""
    kind: FlagKind = FlagKind.RELEASE
    owner: str | None = None
    tags: tuple[str, ...] = ()
    created_at: datetime | None = None
    archived: bool = False
    type: FlagType = FlagType.BOOLEAN
    variants: tuple[Variant, ...] = BOOLEAN_VARIANTS
    # A typed flag's off/on variants a new environment starts with (None: boolean).
    off_variant: str | None = None
    on_variant: str | None = None


@dataclass(frozen=True, slots=True)
class FlagState:
    """A flag's state in one environment. ``version`` grows by one on every change.

    ``type`` and ``variants`` are the flag's definition (the same in every
    environment), carried here so a snapshot entry is self-contained. A boolean
    flag serves on/off from its rules; it takes no ``split`` or
    ``tenant_variants``. A string, number or json flag serves ``off_variant``
    whenever it is off for the caller (the declared safe value, also under a
    kill) and, when on, the tenant's pinned variant, else its ``split`` variant,
    else ``on_variant``. ``split`` is ordered ``(variant, weight)`` pairs summing
    to 1000; ``tenant_variants`` is ``(tenant, variant)`` pairs sorted by tenant.
    ``check_variants`` holds these rules; ``from_dict`` applies it.
    """

    enabled: bool = False
    rollout: int = 0
    tenants_on: frozenset[str] = field(default_factory=frozenset)
    tenants_off: frozenset[str] = field(default_factory=frozenset)
    killed: bool = False
    kill_reason: str | None = None
    killed_at: datetime | None = None
    killed_by: str | None = None
    version: int = 0
    type: FlagType = FlagType.BOOLEAN
    variants: tuple[Variant, ...] = ()
    off_variant: str | None = None
    on_variant: str | None = None
    split: tuple[tuple[str, int], ...] = ()
    tenant_variants: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: sorted tenant lists, ISO-8601 ``killed_at``.

        A boolean flag's form is the one of earlier releases (no variant fields), so
        older readers see nothing new; a typed flag adds ``type``, ``variants``,
        ``off_variant``, ``on_variant``, ``split`` and ``tenant_variants``.
        """
        data: dict[str, Any] = {
            "enabled": self.enabled,
            "rollout": self.rollout,
            "tenants_on": sorted(self.tenants_on),
            "tenants_off": sorted(self.tenants_off),
            "killed": self.killed,
            "kill_reason": self.kill_reason,
            "killed_at": self.killed_at.isoformat() if self.killed_at else None,
            "killed_by": self.killed_by,
            "version": self.version,
        }
        if self.type is not FlagType.BOOLEAN:
            data["type"] = self.type.value
            data["variants"] = [v.to_dict() for v in self.variants]
            data["off_variant"] = self.off_variant
            data["on_variant"] = self.on_variant
            data["split"] = [{"variant": n, "weight": w} for n, w in self.split]
            data["tenant_variants"] = dict(self.tenant_variants)
        return data

    def variant_named(self, name: str | None) -> Variant | None:
        """The declared variant called ``name`` (boolean flags: ``on``/``off``), or None."""
        for v in self.variants or BOOLEAN_VARIANTS:
            if v.name == name:
                return v
        return None

    def check_variants(self) -> FlagState:
        """Return self if its variant fields are consistent, else raise ``ValidationError``.

        Boolean: no variants beyond on/off, no split, no pinned tenants, on/off
        variants (if given) ``on``/``off``. Typed: at least one valid variant,
        ``off_variant`` and ``on_variant`` declared, split and pins valid.
        """
        if self.type is FlagType.BOOLEAN:
            validate_variants(FlagType.BOOLEAN, self.variants)
            if self.split:
                raise ValidationError("a boolean flag takes no split", field="split")
            if self.tenant_variants:
                raise ValidationError(
                    "a boolean flag pins tenants with tenants_on/off", field="tenant_variants"
                )
            if self.on_variant not in (None, "on"):
                raise ValidationError("a boolean flag's on_variant is on", field="on_variant")
            if self.off_variant not in (None, "off"):
                raise ValidationError("a boolean flag's off_variant is off", field="off_variant")
            return self
        variants = validate_variants(self.type, self.variants)
        names = [v.name for v in variants]
        for name, value in (("off_variant", self.off_variant), ("on_variant", self.on_variant)):
            if value is None:
                raise ValidationError(
                    f"{name} is required for a {self.type.value} flag (the value served "
                    f"when {'off, also under a kill' if name == 'off_variant' else 'on'})",
                    field=name,
                )
            if value not in names:
                raise ValidationError(f"{name} {value!r:.60} is not a declared variant", field=name)
        validate_split(self.split, names)
        validate_tenant_variants(self.tenant_variants, names)
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlagState:
        """Parse the JSON form. Raises ``ValidationError`` naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValidationError("a flag state must be a JSON object", field="state")
        killed_at = data.get("killed_at")
        if isinstance(killed_at, str):
            try:
                killed_at = datetime.fromisoformat(killed_at)
            except ValueError as exc:
                raise ValidationError("killed_at is not ISO-8601", field="killed_at") from exc
        elif killed_at is not None and not isinstance(killed_at, datetime):
            raise ValidationError("killed_at is not ISO-8601", field="killed_at")
        enabled = data.get("enabled", False)
        killed = data.get("killed", False)
        version = data.get("version", 0)
        if type(enabled) is not bool:
            raise ValidationError("enabled must be a boolean", field="enabled")
        if type(killed) is not bool:
            raise ValidationError("killed must be a boolean", field="killed")
        if type(version) is not int or version < 0:
            raise ValidationError("version must be a non-negative integer", field="version")
        flag_type = validate_flag_type(data.get("type", FlagType.BOOLEAN.value))
        if flag_type is FlagType.BOOLEAN:
            typed: dict[str, Any] = {}
            for name in ("split", "tenant_variants"):
                if data.get(name):
                    raise ValidationError(f"a boolean flag takes no {name}", field=name)
        else:
            variants = validate_variants(flag_type, data.get("variants"))
            names = [v.name for v in variants]
            typed = {
                "type": flag_type,
                "variants": variants,
                "off_variant": data.get("off_variant"),
                "on_variant": data.get("on_variant"),
                "split": validate_split(data.get("split"), names),
                "tenant_variants": validate_tenant_variants(data.get("tenant_variants"), names),
            }
        state = cls(
            enabled=enabled,
            rollout=validate_rollout(data.get("rollout", 0)),
            tenants_on=validate_tenants(data.get("tenants_on") or (), "tenants_on"),
            tenants_off=validate_tenants(data.get("tenants_off") or (), "tenants_off"),
            killed=killed,
            kill_reason=data.get("kill_reason"),
            killed_at=killed_at,
            killed_by=data.get("killed_by"),
            version=version,
            **typed,
        )
        return state.check_variants() if typed else state


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The answer to one flag check. ``version`` is the flag state's version (0 if unknown)."""

    enabled: bool
    reason: Reason
    version: int = 0
    error: str | None = None
    variant: str | None = None
    value: Any = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """All flag states of one environment at one environment version.

    Archived flags are absent: to an SDK they are ``missing``.
    """

    environment: str
    version: int
    flags: Mapping[str, FlagState]

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "version": self.version,
            "flags": {key: state.to_dict() for key, state in self.flags.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        """Parse the body of ``GET /sdk/v1/snapshot``. Raises ``ValidationError``."""
        if not isinstance(data, Mapping):
            raise ValidationError("a snapshot must be a JSON object", field="snapshot")
        environment = data.get("environment")
        if not isinstance(environment, str):
            raise ValidationError("snapshot.environment must be a string", field="environment")
        version = data.get("version", 0)
        if type(version) is not int:
            raise ValidationError("snapshot.version must be an integer", field="version")
        raw = data.get("flags", {})
        if not isinstance(raw, Mapping):
            raise ValidationError("snapshot.flags must be an object", field="flags")
        flags = {}
        for key, state in raw.items():
            if not isinstance(key, str):
                raise ValidationError("flag keys must be strings", field="flags")
            flags[key] = FlagState.from_dict(state)
        return cls(environment=environment, version=version, flags=flags)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A partial change of one flag state. ``None`` fields are left as they are.

    ``tenants_on`` / ``tenants_off`` replace a set; the ``*_add`` / ``*_remove``
    fields edit it, and adding a tenant to one set removes it from the other.
    """

    enabled: bool | None = None
    rollout: int | None = None
    tenants_on: frozenset[str] | None = None
    tenants_off: frozenset[str] | None = None
    tenants_on_add: frozenset[str] = frozenset()
    tenants_on_remove: frozenset[str] = frozenset()
    tenants_off_add: frozenset[str] = frozenset()
    tenants_off_remove: frozenset[str] = frozenset()
    off_variant: str | None = None
    on_variant: str | None = None
    split: tuple[tuple[str, int], ...] | None = None
    tenant_variants: tuple[tuple[str, str], ...] | None = None

    def is_empty(self) -> bool:
        return (
            self.off_variant is None
            and self.on_variant is None
            and self.split is None
            and self.tenant_variants is None
            and self.enabled is None
            and self.rollout is None
            and self.tenants_on is None
            and self.tenants_off is None
            and not (self.tenants_on_add or self.tenants_on_remove)
            and not (self.tenants_off_add or self.tenants_off_remove)
        )

    def apply(self, state: FlagState) -> FlagState:
        """The state after this change (same ``version``; the store bumps it).

        Raises ``ValidationError`` when a resulting tenant set exceeds 10,000 entries,
        or when the variant fields do not fit the flag (``FlagState.check_variants``).
        """
        on = set(state.tenants_on if self.tenants_on is None else self.tenants_on)
        off = set(state.tenants_off if self.tenants_off is None else self.tenants_off)
        on -= self.tenants_on_remove
        off -= self.tenants_off_remove
        on |= self.tenants_on_add
        off -= self.tenants_on_add
        off |= self.tenants_off_add
        on -= self.tenants_off_add
        for name, tenants in (("tenants_on", on), ("tenants_off", off)):
            if len(tenants) > MAX_TENANT_LIST:
                raise ValidationError(
                    f"{name} would hold {len(tenants)} tenants; at most {MAX_TENANT_LIST}",
                    field=name,
                )
        after = replace(
            state,
            enabled=state.enabled if self.enabled is None else self.enabled,
            rollout=state.rollout if self.rollout is None else self.rollout,
            tenants_on=frozenset(on),
            tenants_off=frozenset(off),
        )
        typed = {
            name: value
            for name in ("off_variant", "on_variant", "split", "tenant_variants")
            if (value := getattr(self, name)) is not None
        }
        return replace(after, **typed).check_variants() if typed else after


@dataclass(frozen=True, slots=True)
class FlagRecord:
    """A flag with its state in each environment (those the reader may see)."""

    flag: Flag
    states: Mapping[str, FlagState]


@dataclass(frozen=True, slots=True)
class FlagChanged:
    """One committed change of a flag in one environment, as SDKs receive it.

    ``version`` is the environment version the change produced; ``state`` is None
    when the flag left the environment's snapshot (archived).
    """

    environment: str
    version: int
    flag: str
    state: FlagState | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "version": self.version,
            "flag": self.flag,
            "state": self.state.to_dict() if self.state is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlagChanged:
        """Parse a change event. Raises ``ValidationError`` on any malformed field."""
        if not isinstance(data, Mapping):
            raise ValidationError("a change event must be a JSON object", field="event")
        environment, version, flag = data.get("environment"), data.get("version"), data.get("flag")
        if not isinstance(environment, str):
            raise ValidationError("environment must be a string", field="environment")
        if type(version) is not int:
            raise ValidationError("version must be an integer", field="version")
        if not isinstance(flag, str):
            raise ValidationError("flag must be a string", field="flag")
        raw = data.get("state")
        return cls(environment, version, flag, None if raw is None else FlagState.from_dict(raw))


@dataclass(frozen=True, slots=True)
class InstanceReport:
    """One SDK instance saying which environment version it applied.

    Sent after every applied update and with every metrics report. ``interval``
    is the instance's report interval in seconds (it counts as live for three of
    them); ``closed`` says it is going away.
    """

    instance_id: str
    environment: str
    host: str
    pid: int
    app: str | None
    applied_version: int
    interval: float = 10.0
    closed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "environment": self.environment,
            "host": self.host,
            "pid": self.pid,
            "app": self.app,
            "applied_version": self.applied_version,
            "interval": self.interval,
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceReport:
        """Parse a report. Raises ``ValidationError`` naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValidationError("an instance report must be a JSON object", field="instance")

        def text(name: str, limit: int, *, optional: bool = False) -> str | None:
            value = data.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not 0 < len(value) <= limit:
                raise ValidationError(
                    f"{name} must be a string of 1 to {limit} characters, got {value!r:.60}",
                    field=name,
                )
            return value

        pid, version = data.get("pid"), data.get("applied_version")
        interval, closed = data.get("interval", 10.0), data.get("closed", False)
        if type(pid) is not int or pid < 0:
            raise ValidationError("pid must be a non-negative integer", field="pid")
        if type(version) is not int or version < 0:
            raise ValidationError(
                "applied_version must be a non-negative integer", field="applied_version"
            )
        if type(interval) not in (int, float) or not 0 < interval <= 3600:
            raise ValidationError(
                "interval must be a number of seconds in (0, 3600]", field="interval"
            )
        if type(closed) is not bool:
            raise ValidationError("closed must be a boolean", field="closed")
        return cls(
            instance_id=str(text("instance_id", 64)),
            environment=str(text("environment", 40)),
            host=str(text("host", 255)),
            pid=pid,
            app=text("app", 200, optional=True),
            applied_version=version,
            interval=float(interval),
            closed=closed,
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    at: datetime
    actor: str
    action: str
    flag: str | None
    environment: str | None
    before: Any
    after: Any
    reason: str | None
    request_id: str | None
    # The API token behind the change (None: the server itself, a plan, the CLI's
    # break-glass mode), and the actor a ``guard`` token claimed (``X-Flagrail-Actor``).
    token_id: str | None = None
    token_name: str | None = None
    claimed_actor: str | None = None
    # For a row about one environment's state (``state.update``, ``kill``, ``unkill``):
    # that environment's version once the change committed, the version an SDK reports
    # when it has applied it. None for rows that are not about one state.
    env_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "flag": self.flag,
            "environment": self.environment,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "request_id": self.request_id,
            "token_id": self.token_id,
            "token_name": self.token_name,
            "claimed_actor": self.claimed_actor,
            "env_version": self.env_version,
        }


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as stored, without its secret. ``environments`` None means all;
    ``flags`` None means every flag, else the fnmatch patterns of the flag keys the
    token may act on."""

    id: str
    name: str
    role: Role
    environments: tuple[str, ...] | None
    created_at: datetime
    revoked: bool = False
    flags: tuple[str, ...] | None = None
    # The console user this token was issued to (#15): disabling the user stops it.
    user: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "environments": list(self.environments) if self.environments is not None else None,
            "flags": list(self.flags) if self.flags is not None else None,
            "user": self.user,
            "created_at": self.created_at.isoformat(),
            "revoked": self.revoked,
        }

    def covers(self, environment: str) -> bool:
        return self.environments is None or environment in self.environments
