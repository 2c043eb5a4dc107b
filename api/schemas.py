"""Request bodies (pydantic, strict, unknown fields rejected) and response serialization.

The response functions are shared with the CLI's direct-database mode, so both
print the same JSON.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flags.model import (
    MAX_TENANT_LIST,
    Environment,
    FlagRecord,
    FlagState,
    StateChange,
    validate_tenants,
)
from flags.store.sql import KillResult, flag_to_dict

Kind = Literal["release", "operational", "kill-switch", "permission"]
RoleName = Literal["client", "reader", "operator", "editor", "admin"]
TenantList = list[str]


# For query and path parameters: no NUL characters (PostgreSQL cannot store or compare them).
NO_NUL = r"^[^\x00]*$"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """Strings, and strings in lists, must not hold NUL characters."""
        items = value if isinstance(value, list) else [value]
        if any(isinstance(item, str) and "\x00" in item for item in items):
            raise ValueError("must not contain NUL characters")
        return value


class EnvironmentCreate(Body):
    name: str = Field(min_length=1, max_length=40)


class FlagCreate(Body):
    key: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=10_000)
    kind: Kind = "release"
    owner: str | None = Field(default=None, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=100)


class FlagUpdate(Body):
    description: str | None = Field(default=None, max_length=10_000)
    owner: str | None = Field(default=None, max_length=200)
    tags: list[str] | None = Field(default=None, max_length=100)
    kind: Kind | None = None


class StateUpdate(Body):
    """Any of the state fields; tenant lists replace, ``*_add``/``*_remove`` edit."""

    enabled: bool | None = None
    rollout: int | None = Field(default=None, ge=0, le=100)
    tenants_on: TenantList | None = Field(default=None, max_length=MAX_TENANT_LIST)
    tenants_off: TenantList | None = Field(default=None, max_length=MAX_TENANT_LIST)
    tenants_on_add: TenantList = Field(default_factory=list, max_length=MAX_TENANT_LIST)
    tenants_on_remove: TenantList = Field(default_factory=list, max_length=MAX_TENANT_LIST)
    tenants_off_add: TenantList = Field(default_factory=list, max_length=MAX_TENANT_LIST)
    tenants_off_remove: TenantList = Field(default_factory=list, max_length=MAX_TENANT_LIST)
    reason: str | None = Field(default=None, max_length=2000)

    def to_change(self) -> StateChange:
        """Raises ``flags.errors.ValidationError`` naming a bad tenant list."""

        def tenants(name: str) -> frozenset[str] | None:
            value = getattr(self, name)
            return None if value is None else validate_tenants(value, name)

        return StateChange(
            enabled=self.enabled,
            rollout=self.rollout,
            tenants_on=tenants("tenants_on"),
            tenants_off=tenants("tenants_off"),
            tenants_on_add=tenants("tenants_on_add") or frozenset(),
            tenants_on_remove=tenants("tenants_on_remove") or frozenset(),
            tenants_off_add=tenants("tenants_off_add") or frozenset(),
            tenants_off_remove=tenants("tenants_off_remove") or frozenset(),
        )


class KillRequest(Body):
    reason: str = Field(min_length=1, max_length=2000)
    environments: list[str] | None = Field(default=None, max_length=100)


class TokenCreate(Body):
    name: str = Field(min_length=1, max_length=200)
    role: RoleName
    environments: list[str] | None = Field(default=None, max_length=100)


def environment_json(env: Environment) -> dict[str, Any]:
    return {"name": env.name, "created_at": env.created_at.isoformat(), "version": env.version}


def state_json(state: FlagState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    data = state.to_dict()
    if extra:
        data.update(extra)
    return data


def flag_json(
    record: FlagRecord, telemetry: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``GET /admin/flags/{key}``; ``telemetry`` adds per-environment evaluation facts."""
    data = flag_to_dict(record.flag)
    telemetry = telemetry or {}
    data["environments"] = {
        env: state_json(state, telemetry.get(env)) for env, state in record.states.items()
    }
    return data


def kill_json(result: KillResult) -> dict[str, Any]:
    return {
        "flag": result.flag,
        "environments": {env: s.to_dict() for env, s in sorted(result.states.items())},
        "changed": result.changed,
    }
