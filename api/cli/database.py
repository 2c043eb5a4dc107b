"""``DatabaseAdmin``: the admin operations directly on a database (the CLI's break-glass
mode, ``--database-url``), through the same ``AdminService`` as the HTTP API.

It offers ``flags.admin_client.AdminApi``, the methods of ``AdminClient``, and
answers the same JSON: each method builds the body the client would send, parses
it with the API's own request models, calls the service as an unscoped admin
named ``cli:<os user>`` and renders the result with the API's render functions.
So a command gives the same answer, and writes the same history rows, whichever
way it goes. Errors are ``flags.errors`` types, raised by the service or the store
(the client raises the same classes for the same faults).

SDKs connected to a server learn of these changes on their next poll, not by push.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from api.schemas import (
    EnvironmentCreate,
    FlagCreate,
    FlagUpdate,
    KillRequest,
    StateUpdate,
    TokenCreate,
    VariantCreate,
    VariantUpdate,
    environment_json,
    environments_json,
    flag_json,
    flag_state_json,
    flag_view_json,
    flags_json,
    history_json,
    kill_json,
    new_token_json,
    parse_body,
    plans_json,
    tokens_json,
    unused_json,
)
from api.service.admin import AdminService
from api.service.approvals import ApprovalService
from api.service.commands import (
    EditVariant,
    FlagFilter,
    MovePlan,
    PlanMove,
    VariantEdit,
    history_filter,
)
from api.service.principal import Principal
from flags.admin_client import flag_body, kill_body, state_body, token_body, variant_path
from flags.durations import parse_instant
from flags.model import validate_environment_name
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore, cli_actor
from flags.store.telemetry import TelemetryStore

__all__ = ["DatabaseAdmin"]


class DatabaseAdmin:
    """The admin operations on the database at ``url`` as ``actor`` (default
    ``cli:<os user>``). The schema must be current: the first call raises
    ``SchemaOutdatedError`` naming ``flagrail db upgrade`` otherwise. A context
    manager; ``close()`` releases the connections."""

    def __init__(self, url: str, *, actor: str | None = None) -> None:
        self.store = SqlFlagStore(url)
        self.principal = Principal.break_glass(actor or cli_actor())
        plans = PlanStore(self.store)
        self.service = AdminService(
            self.store,
            plans=plans,
            telemetry=TelemetryStore(self.store.engine),
            approvals=ApprovalService.on(self.store, plans),  # #16: the same gate
        )
        self._checked = False

    def __enter__(self) -> DatabaseAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def _ready(self) -> AdminService:
        if not self._checked:
            from flags.store.schema import check_schema

            check_schema(self.store.engine)
            self._checked = True
        return self.service

    # ------------------------------------------------------------ environments
    def list_environments(self) -> dict[str, Any]:
        return environments_json(self._ready().list_environments(self.principal))

    def create_environment(self, name: str) -> dict[str, Any]:
        body = parse_body(EnvironmentCreate, {"name": name})
        return environment_json(self._ready().create_environment(self.principal, body.name))

    # ------------------------------------------------------------ flags
    def list_flags(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
    ) -> dict[str, Any]:
        query = FlagFilter(kind, tag, archived, q)
        return flags_json(self._ready().list_flags(self.principal, query))

    def create_flag(
        self,
        key: str,
        *,
        description: str = "",
        kind: str = "release",
        owner: str | None = None,
        tags: Sequence[str] = (),
        type: str | None = None,
        variants: Sequence[Mapping[str, Any]] | None = None,
        off_variant: str | None = None,
        on_variant: str | None = None,
    ) -> dict[str, Any]:
        body = flag_body(
            key,
            description=description,
            kind=kind,
            owner=owner,
            tags=tags,
            type=type,
            variants=variants,
            off_variant=off_variant,
            on_variant=on_variant,
        )
        command = parse_body(FlagCreate, body).to_command()
        return flag_json(self._ready().create_flag(self.principal, command))

    # Typed flags' variants (#19): the client's path checks, then the route's models.
    def add_variant(self, key: str, name: str, value: Any) -> dict[str, Any]:
        variant_path(key)
        command = parse_body(VariantCreate, {"name": name, "value": value}).to_command(key)
        return flag_json(self._ready().edit_variant(self.principal, command))

    def rename_variant(self, key: str, name: str, new_name: str) -> dict[str, Any]:
        variant_path(key, name)
        command = parse_body(VariantUpdate, {"name": new_name}).to_command(key, name)
        return flag_json(self._ready().edit_variant(self.principal, command))

    def set_variant_value(self, key: str, name: str, value: Any) -> dict[str, Any]:
        variant_path(key, name)
        command = parse_body(VariantUpdate, {"value": value}).to_command(key, name)
        return flag_json(self._ready().edit_variant(self.principal, command))

    def remove_variant(self, key: str, name: str) -> dict[str, Any]:
        variant_path(key, name)
        command = EditVariant(key, name, VariantEdit.REMOVE)
        return flag_json(self._ready().edit_variant(self.principal, command))

    def get_flag(self, key: str) -> dict[str, Any]:
        return flag_view_json(self._ready().get_flag(self.principal, key))

    def update_flag(self, key: str, **changes: Any) -> dict[str, Any]:
        command = parse_body(FlagUpdate, changes).to_command(key)
        return flag_json(self._ready().update_flag(self.principal, command))

    def archive_flag(self, key: str) -> dict[str, Any]:
        return flag_json(self._ready().archive_flag(self.principal, key))

    # ------------------------------------------------------------ states and kills
    def set_state(
        self,
        env: str,
        flag: str,
        *,
        reason: str | None = None,
        if_version: int | None = None,
        break_glass: bool = False,
        **change: Any,
    ) -> dict[str, Any]:
        validate_environment_name(env, "env")
        body = state_body(change, reason)
        command = parse_body(StateUpdate, body).to_command(flag, env, if_version)
        state = self._ready().set_state(self.principal, command, break_glass=break_glass)
        return flag_state_json(flag, env, state)

    def kill(
        self,
        env: str | Sequence[str] | None,
        flag: str,
        *,
        reason: str,
        wait: str | None = None,
    ) -> dict[str, Any]:
        """``wait`` is ignored: with no server there are no SDK acknowledgements."""
        command = parse_body(KillRequest, kill_body(env, reason)).to_command(flag)
        return kill_json(self._ready().kill(self.principal, command))

    def unkill(
        self, env: str | Sequence[str] | None, flag: str, *, reason: str, break_glass: bool = False
    ) -> dict[str, Any]:
        command = parse_body(KillRequest, kill_body(env, reason)).to_command(flag)
        return kill_json(self._ready().unkill(self.principal, command, break_glass=break_glass))

    def history(self, **filters: Any) -> dict[str, Any]:
        """As ``AdminClient.history``: with ``flag``, an unknown flag is an error."""
        query = history_filter(**filters)
        service = self._ready()
        if query.flag is None:
            return history_json(service.history(self.principal, query))
        return history_json(service.flag_history(self.principal, query.flag, query))

    # ------------------------------------------------------------ tokens
    def create_token(
        self,
        name: str,
        role: str,
        environments: Sequence[str] | None = None,
        flags: Sequence[str] | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        body = token_body(name, role, environments, flags, user)
        command = parse_body(TokenCreate, body).to_command()
        return new_token_json(*self._ready().create_token(self.principal, command))

    def list_tokens(self) -> dict[str, Any]:
        return tokens_json(self._ready().list_tokens(self.principal))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._ready().revoke_token(self.principal, token_id).to_dict()

    # ------------------------------------------------------------ plans
    def create_plan(
        self, flag: str, plan: Mapping[str, Any], *, break_glass: str | None = None
    ) -> dict[str, Any]:
        service = self._ready()
        return service.create_plan(self.principal, flag, plan, break_glass=break_glass).to_dict()

    def create_schedule(
        self, flag: str, schedule: Mapping[str, Any], *, break_glass: str | None = None
    ) -> dict[str, Any]:
        service = self._ready()
        made = service.create_schedule(self.principal, flag, schedule, break_glass=break_glass)
        return made.to_dict()

    def list_plans(self, flag: str) -> dict[str, Any]:
        return plans_json(self._ready().list_plans(self.principal, flag))

    def get_plan(self, plan_id: int) -> dict[str, Any]:
        return self._ready().get_plan(self.principal, plan_id).to_dict()

    def pause_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]:
        return self._move(plan_id, PlanMove.PAUSE, reason)

    def resume_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]:
        return self._move(plan_id, PlanMove.RESUME, reason)

    def abort_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]:
        return self._move(plan_id, PlanMove.ABORT, reason)

    def advance_plan(self, plan_id: int) -> dict[str, Any]:
        return self._move(plan_id, PlanMove.ADVANCE, None)

    def _move(self, plan_id: int, move: PlanMove, reason: str | None) -> dict[str, Any]:
        command = MovePlan(plan_id, move, reason)
        return self._ready().move_plan(self.principal, command).to_dict()

    # ------------------------------------------------------------ reports
    def unused(self, since: str = "30d") -> dict[str, Any]:
        at = parse_instant(since, "since")
        return unused_json(at, self._ready().unused(self.principal, at))
