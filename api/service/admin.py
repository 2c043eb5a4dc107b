"""``AdminService``: every admin operation, once, for the HTTP API and the CLI.

Each method takes the ``Principal`` calling it and a typed command, checks the
principal's role (``Principal.allow``, against ``principal.PERMISSIONS``) and
environment scope, validates what the command names, and performs the operation
on the stores; the store records the history row in the change's transaction.
Errors are ``flags.errors`` types; ``api/errors.py`` maps them to HTTP and the CLI
prints them as one line.

Thread-safe as its stores are: it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

from api.service.commands import (
    CreateFlag,
    CreateToken,
    FlagFilter,
    Kill,
    MovePlan,
    PlanMove,
    SetState,
    UpdateFlag,
)
from api.service.principal import Operation, Principal
from flags.errors import ForbiddenError
from flags.history import HistoryPage, HistoryQuery
from flags.model import (
    Action,
    Environment,
    FlagRecord,
    FlagState,
    TokenInfo,
    validate_environment_name,
    validate_flag_key,
    validate_flag_patterns,
)
from flags.plans.model import Plan, PlanSpec, parse_plan, parse_schedule
from flags.plans.store import PlanStore
from flags.store import FlagStore, KillResult

__all__ = ["AdminService", "FlagView", "Instances", "Telemetry"]

T = TypeVar("T")
MOVE_OPERATIONS = {
    PlanMove.PAUSE: Operation.STOP_PLAN,
    PlanMove.ABORT: Operation.STOP_PLAN,
    PlanMove.RESUME: Operation.PLAN,
    PlanMove.ADVANCE: Operation.PLAN,
}
TOKEN_ACTIONS = (Action.TOKEN_CREATE.value, Action.TOKEN_REVOKE.value)
# Console users' rows (#15): for those who manage users (unscoped admins) only.
USER_ACTIONS = (Action.USER_CREATE.value, Action.USER_DISABLE.value, Action.USER_ENABLE.value)


class Telemetry(Protocol):
    """What the service reads of SDK telemetry (``flags.store.telemetry.TelemetryStore``)."""

    def flag_environments(self, key: str) -> dict[str, dict[str, Any]]: ...
    def unused(
        self, since: datetime, *, scope: Sequence[str] | None = None
    ) -> list[dict[str, Any]]: ...


class Confirmation(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Instances(Protocol):
    """Live SDK instances (``flags.sync.broadcast.InstanceRegistry``): a server's own."""

    def live(self, environment: str) -> list[dict[str, Any]]: ...
    def wait_applied(self, targets: dict[str, int], timeout: float) -> Confirmation: ...


@dataclass(frozen=True, slots=True)
class FlagView:
    """A flag as ``GET /admin/flags/{key}`` shows it: states, plus evaluation facts per
    environment when SDK telemetry is at hand."""

    record: FlagRecord
    telemetry: Mapping[str, dict[str, Any]] | None = None


class AdminService:
    """The admin operations on ``store``, and on ``plans``, ``telemetry`` and
    ``instances`` when given (an operation that needs a missing one raises
    ``RuntimeError``: a wiring bug). Constructing it does no I/O."""

    def __init__(
        self,
        store: FlagStore,
        *,
        plans: PlanStore | None = None,
        telemetry: Telemetry | None = None,
        instances: Instances | None = None,
    ) -> None:
        self.store = store
        self.plans = plans
        self.telemetry = telemetry
        self.instances = instances

    # ------------------------------------------------------------ environments
    def list_environments(self, principal: Principal) -> list[Environment]:
        """The environments the principal covers, by name."""
        principal.allow(Operation.READ)
        return [e for e in self.store.list_environments() if principal.covers(e.name)]

    def create_environment(
        self, principal: Principal, name: str, *, request_id: str | None = None
    ) -> Environment:
        """Every existing flag gets a disabled state in it. Needs an unscoped admin."""
        principal.allow(Operation.CREATE_ENVIRONMENT)
        principal.check_unscoped("creating an environment")
        return self.store.create_environment(name, actor=principal.actor, request_id=request_id)

    # ------------------------------------------------------------ flags
    def list_flags(self, principal: Principal, query: FlagFilter) -> list[FlagRecord]:
        """Flags with their states in the principal's environments."""
        principal.allow(Operation.READ)
        return self.store.list_flags(
            kind=query.kind,
            tag=query.tag,
            archived=query.archived,
            q=query.q,
            scope=principal.scope,
        )

    def get_flag(self, principal: Principal, key: str) -> FlagView:
        """Raises ``FlagNotFoundError``."""
        principal.allow(Operation.READ)
        validate_flag_key(key)
        record = self.store.get_flag(key, scope=principal.scope)
        facts = self.telemetry.flag_environments(key) if self.telemetry is not None else None
        return FlagView(record, facts)

    def create_flag(
        self, principal: Principal, command: CreateFlag, *, request_id: str | None = None
    ) -> FlagRecord:
        """A new flag, off in every environment. Raises ``AlreadyExistsError``."""
        principal.allow(Operation.EDIT_FLAG)
        validate_flag_key(command.key)
        principal.check_flag(command.key)
        self.store.create_flag(
            command.key,
            description=command.description,
            kind=command.kind,
            owner=command.owner,
            tags=command.tags,
            actor=principal.actor,
            request_id=request_id,
        )
        return self.store.get_flag(command.key, scope=principal.scope)

    def update_flag(
        self, principal: Principal, command: UpdateFlag, *, request_id: str | None = None
    ) -> FlagRecord:
        """Change flag-level metadata, which every environment shares: needs an
        unscoped editor. Raises ``FlagNotFoundError``."""
        principal.allow(Operation.EDIT_FLAG)
        validate_flag_key(command.key)
        principal.check_flag(command.key)
        principal.check_unscoped("changing a flag's metadata (shared by every environment)")
        self.store.update_flag(
            command.key, dict(command.changes), actor=principal.actor, request_id=request_id
        )
        return self.store.get_flag(command.key, scope=principal.scope)

    def archive_flag(
        self, principal: Principal, key: str, *, request_id: str | None = None
    ) -> FlagRecord:
        """Archive a flag (idempotent). Needs an unscoped editor."""
        principal.allow(Operation.EDIT_FLAG)
        validate_flag_key(key)
        principal.check_flag(key)
        principal.check_unscoped("archiving a flag")
        self.store.archive_flag(key, actor=principal.actor, request_id=request_id)
        return self.store.get_flag(key, scope=principal.scope)

    # ------------------------------------------------------------ states and kills
    def set_state(
        self, principal: Principal, command: SetState, *, request_id: str | None = None
    ) -> FlagState:
        """Apply ``command.change``. Raises ``VersionConflictError`` when
        ``expected_version`` is stale, ``FlagNotFoundError``, ``EnvironmentNotFoundError``,
        ``ConflictError`` (archived flag)."""
        principal.allow(Operation.SET_STATE)
        validate_flag_key(command.key)
        validate_environment_name(command.environment)
        principal.check_flag(command.key)
        principal.check_env(command.environment)
        return self.store.update_state(
            command.key,
            command.environment,
            command.change,
            actor=principal.actor,
            expected_version=command.expected_version,
            reason=command.reason,
            request_id=request_id,
        )

    def kill(
        self, principal: Principal, command: Kill, *, request_id: str | None = None
    ) -> KillResult:
        """Kill ``command.key`` in one transaction; environments where it is already
        killed are left as they are."""
        principal.allow(Operation.KILL)
        return self._set_killed(principal, command, True, request_id)

    def unkill(
        self, principal: Principal, command: Kill, *, request_id: str | None = None
    ) -> KillResult:
        """Lift a kill; the mirror of ``kill``."""
        principal.allow(Operation.UNKILL)
        return self._set_killed(principal, command, False, request_id)

    def _set_killed(
        self, principal: Principal, command: Kill, killed: bool, request_id: str | None
    ) -> KillResult:
        validate_flag_key(command.key)
        principal.check_flag(command.key)
        envs: Sequence[str] | None
        if command.environments is None:
            envs = principal.scope
        else:
            for env in command.environments:
                validate_environment_name(env, "environments")
            principal.check_envs(command.environments)
            envs = command.environments
        operation = self.store.kill if killed else self.store.unkill
        return operation(
            command.key,
            None if envs is None else list(envs),
            reason=command.reason,
            actor=principal.actor,
            request_id=request_id,
        )

    def confirm_kill(self, outcome: KillResult, seconds: float) -> dict[str, Any]:
        """Wait until every live SDK instance of the kill's environments applied the
        version the kill produced there (for an environment it left as it was, the
        current version), at most ``seconds``. Returns ``{"confirmed", "live",
        "lagging", "elapsed_ms"}``. Needs ``instances`` (a server's)."""
        instances = self._need(self.instances, "instances")
        targets = dict(outcome.env_versions)
        for env in outcome.states:
            if env not in targets:
                targets[env] = self.store.get_environment(env).version
        return instances.wait_applied(targets, seconds).to_dict()

    # ------------------------------------------------------------ history
    def history(self, principal: Principal, query: HistoryQuery) -> HistoryPage:
        """Changes newest first, limited to the principal's environments whatever
        ``query.scope`` says; token rows only for admins, and for an admin scoped to
        some environments only the rows of tokens within that scope (as
        ``list_tokens``); console user rows only for unscoped admins (who manage users).
        Raises ``ValidationError`` for a bad limit or cursor."""
        principal.allow(Operation.READ)
        if query.environment is not None:
            principal.check_env(query.environment)
        visible: tuple[str, ...] | None = None
        if not principal.may(Operation.READ_TOKEN_HISTORY):
            query = replace(query, hidden_actions=TOKEN_ACTIONS + USER_ACTIONS)
        elif principal.scope is not None or principal.flag_patterns is not None:
            query = replace(query, hidden_actions=USER_ACTIONS)
            visible = tuple(t.id for t in self.store.list_tokens() if self._sees(principal, t))
        return self.store.list_history(
            replace(
                query, scope=principal.scope, token_actions=TOKEN_ACTIONS, visible_tokens=visible
            )
        )

    def flag_history(self, principal: Principal, key: str, query: HistoryQuery) -> HistoryPage:
        """``history`` of one flag. Raises ``FlagNotFoundError`` for an unknown flag."""
        principal.allow(Operation.READ)
        validate_flag_key(key)
        self.store.get_flag(key)
        return self.history(principal, replace(query, flag=key))

    # ------------------------------------------------------------ tokens
    def create_token(
        self, principal: Principal, command: CreateToken, *, request_id: str | None = None
    ) -> tuple[TokenInfo, str]:
        """A new token and its value (shown once). A scoped admin may only hand out
        tokens within its own environments; an admin limited to flag patterns, only
        tokens limited to some of the same patterns. A token issued to a console user
        (``command.user``) needs an unscoped admin (or that user themself) and may not
        reach beyond the user's role and environments. Raises ``ValidationError`` for
        bad ``flags`` patterns, ``UserNotFoundError``, ``ConflictError`` (user
        disabled)."""
        principal.allow(Operation.MANAGE_TOKENS)
        if command.user is not None and command.user != principal.user:
            principal.check_unscoped("issuing a token to a user")
        patterns = None if command.flags is None else validate_flag_patterns(command.flags)
        if principal.flag_patterns is not None and (
            patterns is None or not set(patterns) <= set(principal.flag_patterns)
        ):
            raise ForbiddenError(
                "a token limited to flag patterns can only create tokens limited to some of "
                "the same patterns",
                field="flags",
            )
        if command.environments is not None:
            for env in command.environments:
                validate_environment_name(env, "environments")
            principal.check_envs(command.environments)
        elif principal.scope is not None:
            raise ForbiddenError(
                "a token scoped to some environments cannot create an unscoped token",
                field="environments",
            )
        return self.store.create_token(
            command.name,
            command.role,
            command.environments,
            actor=principal.actor,
            request_id=request_id,
            flags=patterns,
            user=command.user,
        )

    def list_tokens(self, principal: Principal) -> list[TokenInfo]:
        """Tokens within the principal's scope, oldest first."""
        principal.allow(Operation.MANAGE_TOKENS)
        return [t for t in self.store.list_tokens() if self._sees(principal, t)]

    def revoke_token(
        self, principal: Principal, token_id: str, *, request_id: str | None = None
    ) -> TokenInfo:
        """Revoke a token within the principal's scope. Raises ``TokenNotFoundError``."""
        principal.allow(Operation.MANAGE_TOKENS)
        target = next((t for t in self.store.list_tokens() if t.id == token_id), None)
        if target is not None and not self._sees(principal, target):
            raise ForbiddenError("that token reaches beyond this token's environments or flags")
        return self.store.revoke_token(token_id, actor=principal.actor, request_id=request_id)

    @staticmethod
    def _sees(principal: Principal, token: TokenInfo) -> bool:
        """Whether ``token`` lies within the principal's environments and flag patterns."""
        if not principal.within_scope(token.environments):
            return False
        if principal.flag_patterns is None:
            return True
        return token.flags is not None and set(token.flags) <= set(principal.flag_patterns)

    # ------------------------------------------------------------ plans
    def create_plan(
        self,
        principal: Principal,
        key: str,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
    ) -> Plan:
        """A rollout plan from a ``POST .../plans`` body; its first stage is applied at
        once (or at ``start_at``). An unknown flag is a 404 whatever the body."""
        return self._create_plan(principal, key, lambda: parse_plan(body), request_id)

    def create_schedule(
        self,
        principal: Principal,
        key: str,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
    ) -> Plan:
        """One scheduled state change: ``{"environment", "at", "change"}``."""
        plans = self._need(self.plans, "plans")
        return self._create_plan(
            principal, key, lambda: parse_schedule(body, now=plans.clock()), request_id
        )

    def _create_plan(
        self,
        principal: Principal,
        key: str,
        parse: Callable[[], PlanSpec],
        request_id: str | None,
    ) -> Plan:
        principal.allow(Operation.PLAN)
        plans = self._need(self.plans, "plans")
        self._known_flag(principal, key)
        spec = parse()
        principal.check_env(spec.environment)
        return plans.create(key, spec, actor=principal.actor, request_id=request_id)

    def list_plans(self, principal: Principal, key: str) -> list[Plan]:
        """Plans and schedules of ``key`` in the principal's environments, newest first."""
        principal.allow(Operation.READ)
        plans = self._need(self.plans, "plans")
        self._known_flag(principal, key)
        return plans.list_for_flag(key, scope=principal.scope)

    def get_plan(self, principal: Principal, plan_id: int) -> Plan:
        """Raises ``PlanNotFoundError``; ``ForbiddenError`` outside the principal's scope."""
        principal.allow(Operation.READ)
        return self._visible_plan(principal, plan_id)

    def move_plan(
        self, principal: Principal, command: MovePlan, *, request_id: str | None = None
    ) -> Plan:
        """Pause a pending or running plan, resume a paused or rolled-back one (its hold
        starts again), abort one for good (the flag stays as it is), or advance one to
        its next stage now. Raises ``PlanNotFoundError``, ``PlanStateError`` when the
        plan cannot take that step now."""
        principal.allow(MOVE_OPERATIONS[command.move])
        plans = self._need(self.plans, "plans")
        self._visible_plan(principal, command.plan_id)
        plan_id, actor = command.plan_id, principal.actor
        if command.move is PlanMove.ADVANCE:
            return plans.advance(plan_id, actor=actor, request_id=request_id)
        act = {PlanMove.PAUSE: plans.pause, PlanMove.RESUME: plans.resume}.get(
            command.move, plans.abort
        )
        return act(plan_id, actor=actor, reason=command.reason, request_id=request_id)

    def _visible_plan(self, principal: Principal, plan_id: int) -> Plan:
        plan = self._need(self.plans, "plans").get(plan_id)
        principal.check_env(plan.environment)
        return plan

    def _known_flag(self, principal: Principal, key: str) -> None:
        """Reject a malformed ``key``, then 404 for an unknown flag."""
        validate_flag_key(key)
        principal.check_flag(key)
        self.store.get_flag(key)

    # ------------------------------------------------------------ reports
    def unused(self, principal: Principal, since: datetime) -> list[dict[str, Any]]:
        """Live flags created before ``since`` that no SDK evaluated since then, in the
        principal's environments."""
        principal.allow(Operation.READ)
        telemetry = self._need(self.telemetry, "telemetry")
        return telemetry.unused(since, scope=principal.scope)

    def clients(self, principal: Principal, environment: str) -> list[dict[str, Any]]:
        """Live SDK instances of ``environment``. Raises ``EnvironmentNotFoundError``."""
        principal.allow(Operation.READ)
        validate_environment_name(environment)
        principal.check_env(environment)
        self.store.get_environment(environment)
        return self._need(self.instances, "instances").live(environment)

    @staticmethod
    def _need(part: T | None, name: str) -> T:
        if part is None:  # a wiring bug: the front end built the service without it
            raise RuntimeError(f"this AdminService has no {name}")
        return part
