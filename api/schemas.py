"""Request bodies (pydantic, strict, unknown fields rejected) and response rendering.

Each body model turns itself into an ``api.service`` command (``to_command``);
``parse_body`` validates a plain dict with the same models, for the CLI's
database mode. The ``*_json`` functions render service results for both front
ends, so a route and the CLI print the same JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticValidationError

from api.errors import field_from_loc
from api.service.admin import FlagView
from api.service.commands import (
    CreateFlag,
    CreateToken,
    EditVariant,
    Kill,
    SetState,
    UpdateFlag,
    VariantEdit,
)
from flags.errors import ValidationError
from flags.history import HistoryPage
from flags.model import (
    MAX_TENANT_LIST,
    Environment,
    FlagRecord,
    FlagState,
    StateChange,
    TokenInfo,
)
from flags.plans.model import Plan, parse_change
from flags.store import KillResult
from flags.store.sql import flag_to_dict

Kind = Literal["release", "operational", "kill-switch", "permission"]
FlagTypeName = Literal["boolean", "string", "number", "json"]
RoleName = Literal["client", "reader", "operator", "editor", "admin", "guard"]
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


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: object) -> M:
    """Validate ``body`` with a request model, as the route would. Raises
    ``ValidationError`` naming the first offending field."""
    try:
        return model.model_validate(body)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        field = field_from_loc(tuple(first.get("loc", ()))) or "body"
        raise ValidationError(f"{field}: {first.get('msg')}", field=field) from exc


class VariantBody(Body):
    """A variant (#19): its value is checked against the flag's type by the store."""

    name: str = Field(min_length=1, max_length=64)
    value: Any


class FlagCreate(Body):
    key: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=10_000)
    kind: Kind = "release"
    owner: str | None = Field(default=None, max_length=200)
    tags: list[str] = Field(default_factory=list, max_length=100)
    # Typed flags (#19): the type, the variants, the safe (off) and on variants.
    type: FlagTypeName = "boolean"
    variants: list[VariantBody] | None = Field(default=None, max_length=100)
    off_variant: str | None = Field(default=None, max_length=64)
    on_variant: str | None = Field(default=None, max_length=64)

    def to_command(self) -> CreateFlag:
        variants = None if self.variants is None else tuple(v.model_dump() for v in self.variants)
        return CreateFlag(
            self.key,
            self.description,
            self.kind,
            self.owner,
            tuple(self.tags),
            self.type,
            variants,
            self.off_variant,
            self.on_variant,
        )


class VariantCreate(Body):
    """``POST /admin/flags/{key}/variants``."""

    name: str = Field(min_length=1, max_length=64)
    value: Any

    def to_command(self, key: str) -> EditVariant:
        return EditVariant(key, self.name, VariantEdit.ADD, value=self.value)


class VariantUpdate(Body):
    """``PATCH /admin/flags/{key}/variants/{name}``: a new ``name`` (rename) or a new
    ``value``, not both."""

    name: str | None = Field(default=None, min_length=1, max_length=64)
    value: Any = None

    def to_command(self, key: str, name: str) -> EditVariant:
        given = self.model_fields_set & {"name", "value"}
        if len(given) != 1:
            raise ValidationError("give a new name or a new value (one of them)", field="body")
        if "name" in given:
            if self.name is None:
                raise ValidationError("name must be a variant name", field="name")
            return EditVariant(key, name, VariantEdit.RENAME, new_name=self.name)
        return EditVariant(key, name, VariantEdit.SET_VALUE, value=self.value)


class FlagUpdate(Body):
    description: str | None = Field(default=None, max_length=10_000)
    owner: str | None = Field(default=None, max_length=200)
    tags: list[str] | None = Field(default=None, max_length=100)
    kind: Kind | None = None
    # A typed flag's initial off/on variants (#19): what a new environment starts with.
    off_variant: str | None = Field(default=None, min_length=1, max_length=64)
    on_variant: str | None = Field(default=None, min_length=1, max_length=64)

    def to_command(self, key: str) -> UpdateFlag:
        """Only the fields the body set (``owner: null`` clears the owner)."""
        return UpdateFlag(key, self.model_dump(exclude_unset=True))


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
    # Typed flags (#19): checked by ``parse_change`` (shape) and the flag (variants).
    off_variant: str | None = Field(default=None, max_length=64)
    on_variant: str | None = Field(default=None, max_length=64)
    split: list[dict[str, Any]] | dict[str, Any] | None = Field(default=None, max_length=100)
    tenant_variants: dict[str, Any] | None = Field(default=None, max_length=MAX_TENANT_LIST)
    reason: str | None = Field(default=None, max_length=2000)

    def to_change(self) -> StateChange:
        """Raises ``flags.errors.ValidationError`` naming a bad tenant list."""
        return parse_change(
            self.model_dump(exclude_none=True, exclude={"reason"}), "", allow_empty=True
        )

    def to_command(self, key: str, environment: str, expected_version: int | None) -> SetState:
        return SetState(key, environment, self.to_change(), self.reason, expected_version)


class KillRequest(Body):
    reason: str = Field(min_length=1, max_length=2000)
    environments: list[str] | None = Field(default=None, max_length=100)

    def to_command(self, key: str) -> Kill:
        envs = None if self.environments is None else tuple(self.environments)
        return Kill(key, self.reason, envs)


class TokenCreate(Body):
    name: str = Field(min_length=1, max_length=200)
    role: RoleName
    environments: list[str] | None = Field(default=None, max_length=100)
    # fnmatch patterns of the flag keys the token may act on (None: every flag); the
    # service validates each (``flags.model.validate_flag_patterns``).
    flags: list[str] | None = Field(default=None, min_length=1, max_length=50)
    # The console user the token is issued to (#15); it stops working while they are
    # disabled.
    user: str | None = Field(default=None, min_length=1, max_length=64)

    def to_command(self) -> CreateToken:
        envs = None if self.environments is None else tuple(self.environments)
        patterns = None if self.flags is None else tuple(self.flags)
        return CreateToken(self.name, self.role, envs, patterns, self.user)


class PlanActionBody(Body):
    """Optional body of pause / resume / abort: why (recorded in the history)."""

    reason: str | None = None


def environment_json(env: Environment) -> dict[str, Any]:
    return {"name": env.name, "created_at": env.created_at.isoformat(), "version": env.version}


def state_json(state: FlagState, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    data = state.to_dict()
    if extra:
        data.update(extra)
    return data


def flag_json(
    record: FlagRecord, telemetry: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A flag with its states; ``telemetry`` adds per-environment evaluation facts."""
    data = flag_to_dict(record.flag)
    telemetry = telemetry or {}
    data["environments"] = {
        env: state_json(state, telemetry.get(env)) for env, state in record.states.items()
    }
    return data


def flag_view_json(view: FlagView) -> dict[str, Any]:
    """``GET /admin/flags/{key}``."""
    return flag_json(view.record, view.telemetry)


def flags_json(records: Sequence[FlagRecord]) -> dict[str, Any]:
    return {"items": [flag_json(r) for r in records]}


def environments_json(envs: Sequence[Environment]) -> dict[str, Any]:
    return {"items": [environment_json(e) for e in envs]}


def flag_state_json(key: str, environment: str, state: FlagState) -> dict[str, Any]:
    """The answer of a state change: the state, with its flag and environment."""
    return {"flag": key, "environment": environment, **state.to_dict()}


def kill_json(result: KillResult) -> dict[str, Any]:
    return {
        "flag": result.flag,
        "environments": {env: s.to_dict() for env, s in sorted(result.states.items())},
        "changed": result.changed,
    }


def history_json(page: HistoryPage) -> dict[str, Any]:
    return page.to_dict()


def new_token_json(info: TokenInfo, secret: str) -> dict[str, Any]:
    """A created token, with its value (shown this once)."""
    return {
        "id": info.id,
        "name": info.name,
        "role": info.role.value,
        "environments": list(info.environments) if info.environments is not None else None,
        "flags": list(info.flags) if info.flags is not None else None,
        "user": info.user,
        "token": secret,
    }


def plans_json(plans: Sequence[Plan]) -> dict[str, Any]:
    return {"items": [p.to_dict() for p in plans]}


def unused_json(since: datetime, items: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /admin/reports/unused``."""
    return {"since": since.astimezone(UTC).isoformat(), "items": items}


def tokens_json(tokens: Sequence[TokenInfo]) -> dict[str, Any]:
    return {"items": [t.to_dict() for t in tokens]}
