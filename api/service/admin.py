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

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from api.service.commands import (
    CreateFlag,
    CreateToken,
    EditVariant,
    FlagFilter,
    Kill,
    MovePlan,
    PlanMove,
    SetState,
    UpdateFlag,
    VariantEdit,
)
from api.service.principal import Operation, Principal
from flags.errors import ApprovalRequiredError, FlagrailError, ForbiddenError, ValidationError
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
from flags.store import FlagPage, FlagStore, KillResult
from flags.store.change_requests import ChangeKind

if TYPE_CHECKING:  # #16 approvals: the gate (api.service.approvals)
    from api.service.approvals import ApprovalService

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


log = logging.getLogger("flagrail.api.service")


class Telemetry(Protocol):
    """What the service reads of SDK telemetry (``flags.store.telemetry.TelemetryStore``)."""

    def flag_environments(self, key: str) -> dict[str, dict[str, Any]]: ...
    def unused(
        self, since: datetime, *, scope: Sequence[str] | None = None
    ) -> list[dict[str, Any]]: ...
    def counter_totals(self, flag: str, environment: str, since: datetime) -> dict[str, float]: ...


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
        approvals: ApprovalService | None = None,
    ) -> None:
        self.store = store
        self.plans = plans
        self.telemetry = telemetry
        self.instances = instances
        # #16: with it, a change that raises risk in an environment whose policy
        # requires approvals is held as a change request (ApprovalRequiredError).
        self.approvals = approvals

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

    def flags_page(
        self,
        principal: Principal,
        query: FlagFilter,
        *,
        owner: str | None = None,
        state: str | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> FlagPage:
        """One page of ``list_flags`` (also by ``owner`` and by a ``state`` word in any
        of the principal's environments), filtered, sorted and cut by the store: a page
        reads its own flags only. Raises ``ValidationError`` naming ``state``, ``page``
        or ``page_size``."""
        principal.allow(Operation.READ)
        return self.store.list_flags_page(
            kind=query.kind,
            tag=query.tag,
            archived=query.archived,
            q=query.q,
            owner=owner,
            state=state,
            scope=principal.scope,
            page=page,
            page_size=page_size,
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
            type=command.type,
            variants=command.variants,
            off_variant=command.off_variant,
            on_variant=command.on_variant,
        )
        return self.store.get_flag(command.key, scope=principal.scope)

    def edit_variant(
        self, principal: Principal, command: EditVariant, *, request_id: str | None = None
    ) -> FlagRecord:
        """Add, rename, re-value or remove a typed flag's variant (#19). Variants are
        shared by every environment: needs an unscoped editor. Raises
        ``FlagNotFoundError``, ``NotFoundError`` (no such variant, field ``name``),
        ``AlreadyExistsError``, ``ConflictError`` (removing a variant an environment
        serves, naming where; an archived flag), ``ValidationError`` naming the field."""
        principal.allow(Operation.EDIT_FLAG)
        validate_flag_key(command.key)
        principal.check_flag(command.key)
        principal.check_unscoped("changing a flag's variants (shared by every environment)")
        common: dict[str, Any] = {"actor": principal.actor, "request_id": request_id}
        if command.edit is VariantEdit.ADD:
            self.store.add_variant(command.key, command.name, command.value, **common)
        elif command.edit is VariantEdit.RENAME:
            new_name = command.new_name if command.new_name is not None else ""
            self.store.rename_variant(command.key, command.name, new_name, **common)
        elif command.edit is VariantEdit.SET_VALUE:
            self.store.set_variant_value(command.key, command.name, command.value, **common)
        else:
            self.store.remove_variant(command.key, command.name, **common)
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
        self,
        principal: Principal,
        command: SetState,
        *,
        request_id: str | None = None,
        break_glass: bool = False,
    ) -> FlagState:
        """Apply ``command.change``. Raises ``VersionConflictError`` when
        ``expected_version`` is stale, ``FlagNotFoundError``, ``EnvironmentNotFoundError``,
        ``ConflictError`` (archived flag).

        In an environment whose policy requires approvals, a change that raises risk
        does not apply: it raises ``ApprovalRequiredError`` naming the change request
        it became. With ``break_glass`` (an admin, ``command.reason`` required) it
        applies at once, recorded as break-glass, opening a review item."""
        principal.allow(Operation.SET_STATE)
        validate_flag_key(command.key)
        validate_environment_name(command.environment)
        principal.check_flag(command.key)
        principal.check_env(command.environment)
        glass = _break_glass_reason(break_glass, command.reason)
        if self.approvals is not None and self.approvals.gated_environments([command.environment]):
            submitted = self.approvals.submit_state(
                principal, command, break_glass=glass, request_id=request_id
            )
            if submitted.request is not None:
                raise ApprovalRequiredError([submitted.request.id], submitted.request.to_dict())
            assert submitted.state is not None  # applied: at once or by break-glass
            return submitted.state
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
        self,
        principal: Principal,
        command: Kill,
        *,
        request_id: str | None = None,
        break_glass: bool = False,
    ) -> KillResult:
        """Lift a kill; the mirror of ``kill``. An unkill raises risk: in an environment
        whose policy requires approvals it becomes a change request (the environments
        that need none are unkilled at once) and ``ApprovalRequiredError`` names the
        requests; with ``break_glass`` (an admin) it applies at once, with review items."""
        principal.allow(Operation.UNKILL)
        if self.approvals is not None:
            held = self._unkill_gated(principal, command, request_id, break_glass)
            if held is not None:
                return held
        return self._set_killed(principal, command, False, request_id)

    def _unkill_gated(
        self, principal: Principal, command: Kill, request_id: str | None, break_glass: bool
    ) -> KillResult | None:
        """The unkill through the approval gate, or None when no environment it reaches
        is gated (the caller unkills as always)."""
        assert self.approvals is not None
        validate_flag_key(command.key)
        principal.check_flag(command.key)
        envs = command.environments
        if envs is not None:
            for env in envs:
                validate_environment_name(env, "environments")
            principal.check_envs(envs)
        gated = self.approvals.gated()
        if not gated:
            return None  # the usual case: no approvals anywhere, one read to know it
        names = (
            envs
            if envs is not None
            else principal.visible(e.name for e in self.store.list_environments())
        )
        if not any(name in gated for name in names):
            return None
        outcome = self.approvals.submit_unkill(
            principal,
            command.key,
            envs,
            reason=command.reason,
            break_glass=_break_glass_reason(break_glass, command.reason),
            request_id=request_id,
        )
        requests = [s.request for s in outcome.submitted.values() if s.request is not None]
        if requests:
            raise ApprovalRequiredError(
                [r.id for r in requests],
                {
                    "status": "pending",
                    "flag": command.key,
                    "change_requests": [r.to_dict() for r in requests],
                    "environments": {e: s.to_dict() for e, s in sorted(outcome.states.items())},
                },
            )
        return KillResult(command.key, dict(outcome.states), changed=sorted(outcome.states))

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
        "lagging", "elapsed_ms"}``; each lagging instance carries the ``token_id`` and
        ``token_name`` of the token that owns it (#14; null when unknown: a pre-0008
        row, a deleted token, or telemetry out of reach). Needs ``instances``."""
        instances = self._need(self.instances, "instances")
        targets = dict(outcome.env_versions)
        for env in outcome.states:
            if env not in targets:
                targets[env] = self.store.get_environment(env).version
        result = instances.wait_applied(targets, seconds).to_dict()
        lagging = result.get("lagging") or []
        owners: dict[str, dict[str, Any]] = {}
        telemetry = getattr(instances, "telemetry", None)
        if lagging and telemetry is not None:
            try:
                owners = telemetry.instance_tokens([i["instance_id"] for i in lagging])
            except FlagrailError as exc:  # the kill is done; naming owners is a courtesy
                log.warning("cannot read the owners of lagging instances: %s", exc)
        for item in lagging:
            owner = owners.get(item["instance_id"], {})
            item["token_id"] = owner.get("token_id")
            item["token_name"] = owner.get("token_name")
        return result

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
        break_glass: str | None = None,
    ) -> Plan:
        """A rollout plan from a ``POST .../plans`` body; its first stage is applied at
        once (or at ``start_at``). An unknown flag is a 404 whatever the body. In a gated
        environment the whole plan is one change request (``ApprovalRequiredError``),
        unless an admin breaks glass (``break_glass``: the reason)."""
        return self._create_plan(
            principal, key, lambda: parse_plan(body), request_id, body, break_glass
        )

    def create_schedule(
        self,
        principal: Principal,
        key: str,
        body: Mapping[str, Any],
        *,
        request_id: str | None = None,
        break_glass: str | None = None,
    ) -> Plan:
        """One scheduled state change: ``{"environment", "at", "change"}``; gated as
        ``create_plan``."""
        plans = self._need(self.plans, "plans")
        return self._create_plan(
            principal,
            key,
            lambda: parse_schedule(body, now=plans.clock()),
            request_id,
            body,
            break_glass,
        )

    def _create_plan(
        self,
        principal: Principal,
        key: str,
        parse: Callable[[], PlanSpec],
        request_id: str | None,
        body: Mapping[str, Any],
        break_glass: str | None,
    ) -> Plan:
        principal.allow(Operation.PLAN)
        plans = self._need(self.plans, "plans")
        self._known_flag(principal, key)
        spec = parse()
        principal.check_env(spec.environment)
        if self.approvals is not None:
            submitted = self.approvals.submit_plan(
                principal,
                ChangeKind(spec.kind.value),
                key,
                spec.environment,
                dict(body),
                break_glass=_break_glass_reason(break_glass is not None, break_glass),
                request_id=request_id,
            )
            if submitted is not None and submitted.request is not None:
                raise ApprovalRequiredError([submitted.request.id], submitted.request.to_dict())
            if submitted is not None:  # created by break-glass: the newest plan there
                return plans.list_for_flag(key, scope=(spec.environment,))[0]
        return plans.create(key, spec, actor=principal.actor, request_id=request_id)

    def list_plans(self, principal: Principal, key: str) -> list[Plan]:
        """Plans and schedules of ``key`` in the principal's environments, newest first."""
        principal.allow(Operation.READ)
        plans = self._need(self.plans, "plans")
        self._known_flag(principal, key)
        return plans.list_for_flag(key, scope=principal.scope)

    def recent_plans(self, principal: Principal, *, limit: int = 100) -> list[Plan]:
        """Every flag's plans and schedules in the principal's environments (and flag
        patterns), newest first; ``limit`` is held to 1..500."""
        principal.allow(Operation.READ)
        plans = self._need(self.plans, "plans")
        found = plans.list_recent(scope=principal.scope, limit=min(max(limit, 1), 500))
        return [p for p in found if self._covers_flag(principal, p.flag)]

    @staticmethod
    def _covers_flag(principal: Principal, key: str) -> bool:
        try:
            principal.check_flag(key)
        except ForbiddenError:
            return False
        return True

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

    def counter_totals(
        self, principal: Principal, key: str, environment: str, since: datetime
    ) -> dict[str, float]:
        """The sum of each SDK counter of flag ``key`` in ``environment`` reported since
        ``since`` (``TelemetryStore.counter_totals``): a cache layer's hits, misses,
        corrupt reads, mismatches, errors, guard breaches, circuit openings. Raises
        ``ForbiddenError`` outside the principal's environments or flag patterns."""
        principal.allow(Operation.READ)
        validate_flag_key(key)
        validate_environment_name(environment)
        principal.check_env(environment)
        principal.check_flag(key)
        return self._need(self.telemetry, "telemetry").counter_totals(key, environment, since)

    @staticmethod
    def _need(part: T | None, name: str) -> T:
        if part is None:  # a wiring bug: the front end built the service without it
            raise RuntimeError(f"this AdminService has no {name}")
        return part


def _break_glass_reason(break_glass: bool, reason: str | None) -> str | None:
    """The break-glass reason (#16), or None without break-glass. Raises
    ``ValidationError`` (field ``reason``) for break-glass without a reason."""
    if not break_glass:
        return None
    if reason is None or not reason.strip():
        raise ValidationError("break-glass needs a reason (--reason)", field="reason")
    return reason
