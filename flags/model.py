"""Frozen values of the flag model, and the validation of their names.

Nothing here does I/O. ``FlagState.to_dict`` / ``FlagState.from_dict`` define the
JSON form of a state used by the admin API, the SDK snapshot and the history.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from flags.errors import ValidationError

ENVIRONMENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
FLAG_KEY = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
MAX_TENANT_LENGTH = 200
MAX_TENANT_LIST = 10_000
DEFAULT_ENVIRONMENTS = ("development", "staging", "beta", "production")


class FlagKind(StrEnum):
    RELEASE = "release"
    OPERATIONAL = "operational"
    KILL_SWITCH = "kill-switch"
    PERMISSION = "permission"


class Role(StrEnum):
    """Token roles, each including the rights of the one before (``client`` stands apart)."""

    CLIENT = "client"
    READER = "reader"
    OPERATOR = "operator"
    EDITOR = "editor"
    ADMIN = "admin"


class Reason(StrEnum):
    """Why an evaluation came out the way it did."""

    KILLED = "killed"
    MISSING = "missing"
    DISABLED = "disabled"
    TENANT_OFF = "tenant_off"
    TENANT_ON = "tenant_on"
    ROLLOUT = "rollout"
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


@dataclass(frozen=True, slots=True)
class FlagState:
    """A flag's state in one environment. ``version`` grows by one on every change."""

    enabled: bool = False
    rollout: int = 0
    tenants_on: frozenset[str] = field(default_factory=frozenset)
    tenants_off: frozenset[str] = field(default_factory=frozenset)
    killed: bool = False
    kill_reason: str | None = None
    killed_at: datetime | None = None
    killed_by: str | None = None
    version: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: sorted tenant lists, ISO-8601 ``killed_at``."""
        return {
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
        return cls(
            enabled=enabled,
            rollout=validate_rollout(data.get("rollout", 0)),
            tenants_on=validate_tenants(data.get("tenants_on") or (), "tenants_on"),
            tenants_off=validate_tenants(data.get("tenants_off") or (), "tenants_off"),
            killed=killed,
            kill_reason=data.get("kill_reason"),
            killed_at=killed_at,
            killed_by=data.get("killed_by"),
            version=version,
        )


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The answer to one flag check. ``version`` is the flag state's version (0 if unknown)."""

    enabled: bool
    reason: Reason
    version: int = 0
    error: str | None = None


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

    def is_empty(self) -> bool:
        return (
            self.enabled is None
            and self.rollout is None
            and self.tenants_on is None
            and self.tenants_off is None
            and not (self.tenants_on_add or self.tenants_on_remove)
            and not (self.tenants_off_add or self.tenants_off_remove)
        )

    def apply(self, state: FlagState) -> FlagState:
        """The state after this change (same ``version``; the store bumps it).

        Raises ``ValidationError`` when a resulting tenant set exceeds 10,000 entries.
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
        return FlagState(
            enabled=state.enabled if self.enabled is None else self.enabled,
            rollout=state.rollout if self.rollout is None else self.rollout,
            tenants_on=frozenset(on),
            tenants_off=frozenset(off),
            killed=state.killed,
            kill_reason=state.kill_reason,
            killed_at=state.killed_at,
            killed_by=state.killed_by,
            version=state.version,
        )


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
        }


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as stored, without its secret. ``environments`` None means all."""

    id: str
    name: str
    role: Role
    environments: tuple[str, ...] | None
    created_at: datetime
    revoked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role.value,
            "environments": list(self.environments) if self.environments is not None else None,
            "created_at": self.created_at.isoformat(),
            "revoked": self.revoked,
        }

    def covers(self, environment: str) -> bool:
        return self.environments is None or environment in self.environments
