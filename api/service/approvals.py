"""``ApprovalService``: the approval gate, change requests and break-glass, for every front end.

One rule decides whether a change waits: in an environment whose policy requires
approvals, a change that *raises* risk (``flags.risk.risk``) becomes a pending
``ChangeRequest``; one that lowers risk, or changes nothing, applies at once for
whoever may make it. ``submit`` is that rule; it judges the change against the
state it is applied to (a compare-and-set on the state's version, retried), so a
concurrent change cannot turn a judged-lowering change into an unreviewed raise.

People: approvals count per person (``person_of``): a console user
(``user:<name>``), the user a token belongs to (``user:<name>``, when the principal
carries one), a token without a user (``token:<id>``, its own person) or the
database CLI (``cli:<user>``).

Who may do what:

- submit, edit (the author only), approve, reject, apply, acknowledge a review
  item: the right the change itself needs (``set_state``; ``unkill`` for an
  unkill), within the principal's environment scope and flag patterns;
- cancel: the author, or an admin;
- break glass: an admin, with a reason; the change applies at once, is recorded
  as break-glass, and opens a review item a *second* person must acknowledge;
- set a policy: an admin scoped to every environment.

Thread-safe as its stores are: it holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from api.service.commands import SetState
from api.service.principal import Operation, Principal
from flags.errors import ForbiddenError, ValidationError, VersionConflictError
from flags.model import FlagState, Role, StateChange, validate_environment_name, validate_flag_key
from flags.risk import Risk, risk
from flags.store.change_requests import (
    PLAN_KINDS,
    ChangeKind,
    ChangeRequest,
    ChangeRequestNotFoundError,
    ChangeRequestStore,
    Policy,
    RequestStatus,
    ReviewItem,
    target_state,
    validate_policy,
)
from flags.store.sql import SqlFlagStore

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from flags.history import Actor
    from flags.model import FlagChanged
    from flags.plans.store import PlanStore

__all__ = ["ApprovalService", "PlanStoreWriter", "Submitted", "UnkillOutcome", "person_of"]

# How often ``submit`` re-judges a change when the state moved between its read and
# its write; each retry means another writer committed, so this bounds only a storm.
MAX_JUDGE_ATTEMPTS = 5


def person_of(principal: Principal) -> str:
    """The person behind ``principal``, as approvals count people.

    A principal carrying the user its token belongs to (an attribute ``user`` naming
    them) is that user; a token without a user is its own person; a principal
    without a token (a console user ``user:<name>``, the CLI ``cli:<user>``) is the
    name it acts under.
    """
    user = getattr(principal, "user", None)
    if isinstance(user, str) and user:
        return f"user:{user}"
    if principal.token_id is not None:
        return f"token:{principal.token_id}"
    return principal.name


@dataclass(frozen=True, slots=True)
class Submitted:
    """What became of a submitted change: applied at once (``state``), held as a
    pending ``request``, or applied by break-glass (``state`` and ``review``).
    ``risk`` is the change's direction as judged."""

    risk: Risk
    state: FlagState | None = None
    request: ChangeRequest | None = None
    review: ReviewItem | None = None

    @property
    def pending(self) -> bool:
        return self.request is not None


@dataclass(frozen=True, slots=True)
class UnkillOutcome:
    """An unkill over several environments: ``states`` where it applied (at once or by
    break-glass), ``submitted`` for each gated environment (a pending request, or the
    break-glass outcome with its review item)."""

    states: Mapping[str, FlagState]
    submitted: Mapping[str, Submitted]

    @property
    def pending(self) -> dict[str, int]:
        """The gated environments whose unkill waits, with their request ids."""
        return {env: s.request.id for env, s in self.submitted.items() if s.request is not None}


class PlanStoreWriter:
    """The ``PlanWriter`` of a ``PlanStore``: an approved (or break-glass) plan or
    schedule is parsed from its stored body and created inside the apply's
    transaction, its history row naming the request."""

    def __init__(self, plans: PlanStore) -> None:
        self.plans = plans

    def create_on(
        self,
        conn: Connection,
        key: str,
        kind: ChangeKind,
        body: Mapping[str, Any],
        *,
        actor: Actor,
        reason: str,
        request_id: str | None,
    ) -> Sequence[FlagChanged]:
        from flags.plans.model import parse_plan, parse_schedule

        if kind is ChangeKind.PLAN:
            spec = parse_plan(body)
        else:
            spec = parse_schedule(body, now=self.plans.clock())
        events: list[FlagChanged] = []
        self.plans.create_on(
            conn, key, spec, actor=actor, events=events, request_id=request_id, reason=reason
        )
        return events


def _operation(kind: ChangeKind) -> Operation:
    if kind in PLAN_KINDS:
        return Operation.PLAN
    return Operation.UNKILL if kind is ChangeKind.UNKILL else Operation.SET_STATE


class ApprovalService:
    """The gate and the change-request operations over one database."""

    def __init__(self, flags: SqlFlagStore, requests: ChangeRequestStore) -> None:
        self.flags = flags
        self.requests = requests

    @classmethod
    def on(cls, flags: SqlFlagStore, plans: PlanStore | None = None) -> ApprovalService:
        """The service over ``flags``'s database; held plans are created in ``plans``
        when they apply. No I/O."""
        writer = PlanStoreWriter(plans) if plans is not None else None
        return cls(flags, ChangeRequestStore(flags, plans=writer))

    # ------------------------------------------------------------ policy
    def policy(self, principal: Principal, environment: str) -> Policy:
        principal.allow(Operation.READ)
        validate_environment_name(environment)
        principal.check_env(environment)
        self.flags.get_environment(environment)
        return self.requests.policy(environment)

    def set_policy(
        self,
        principal: Principal,
        environment: str,
        required_approvals: object,
        allow_self_approval: object = False,
        *,
        request_id: str | None = None,
    ) -> Policy:
        """Set ``environment``'s policy (recorded in the history). Admins scoped to
        every environment only: a scoped admin could otherwise lift its own gate.
        Raises ``ValidationError``, ``ForbiddenError``, ``EnvironmentNotFoundError``."""
        principal.allow(Operation.CREATE_ENVIRONMENT)
        principal.check_unscoped("changing an approval policy")
        policy = validate_policy(environment, required_approvals, allow_self_approval)
        return self.requests.set_policy(policy, actor=principal.actor, request_id=request_id)

    def gated(self) -> frozenset[str]:
        """The environments whose policy requires approvals (one read of the policies,
        whatever the number of environments: an unkill in every environment asks on
        its emergency path)."""
        return frozenset(p.environment for p in self.requests.policies() if p.gated)

    def gated_environments(self, environments: Iterable[str]) -> list[str]:
        """Those of ``environments`` whose policy requires approvals, in order."""
        gated = self.gated()
        return [env for env in environments if env in gated]

    # ------------------------------------------------------------ the gate
    def _check(self, principal: Principal, kind: ChangeKind, key: str, environment: str) -> None:
        principal.allow(_operation(kind))
        validate_flag_key(key)
        validate_environment_name(environment)
        principal.check_flag(key)
        principal.check_env(environment)

    def submit(
        self,
        principal: Principal,
        kind: ChangeKind,
        key: str,
        environment: str,
        change: StateChange = StateChange(),
        *,
        reason: str | None = None,
        expected_version: int | None = None,
        break_glass: str | None = None,
        request_id: str | None = None,
    ) -> Submitted:
        """Apply ``change`` (kind ``state``) or the unkill (kind ``unkill``) of ``key`` in
        ``environment`` now, or hold it as a change request when it raises risk in a
        gated environment.

        With ``break_glass`` (the reason), an admin applies a gated raising change at
        once, recorded as break-glass, opening a review item. A lowering change never
        waits and ignores ``break_glass``. Raises ``ForbiddenError`` (role, scope,
        break-glass by a non-admin), ``ValidationError``, ``VersionConflictError``,
        ``FlagNotFoundError``, ``EnvironmentNotFoundError``, ``ConflictError``.
        """
        if kind in PLAN_KINDS:
            raise ValidationError("plans go through submit_plan", field="kind")
        self._check(principal, kind, key, environment)
        self._check_break_glass(principal, break_glass)
        policy = self.requests.policy(environment)
        for _ in range(MAX_JUDGE_ATTEMPTS):
            before = self.flags.get_state(key, environment)
            if expected_version is not None and expected_version != before.version:
                raise VersionConflictError(
                    f"flag {key!r} in {environment!r} is at version {before.version}, "
                    f"not {expected_version}",
                    current=before.to_dict(),
                    field="If-Match",
                )
            after = target_state(kind, change, before)
            direction = risk(before, after)
            if policy.gated and direction is Risk.RAISES:
                return self._hold(
                    principal, kind, key, environment, change, before, reason, break_glass,
                    request_id,
                )  # fmt: skip
            try:
                state = self._apply_now(
                    principal, kind, key, environment, change, before, reason, request_id
                )
            except VersionConflictError:
                if expected_version is not None:
                    raise
                continue  # another writer moved the state: judge again from the new one
            return Submitted(direction, state=state)
        raise VersionConflictError(
            f"flag {key!r} in {environment!r} kept changing while this change was judged",
            current=self.flags.get_state(key, environment).to_dict(),
            field="If-Match",
        )

    def submit_state(
        self,
        principal: Principal,
        command: SetState,
        *,
        break_glass: str | None = None,
        request_id: str | None = None,
    ) -> Submitted:
        """``submit`` for ``AdminService.set_state``'s command (the one call its gate
        needs): applied at once, or held as a change request, or broken glass."""
        return self.submit(
            principal,
            ChangeKind.STATE,
            command.key,
            command.environment,
            command.change,
            reason=command.reason,
            expected_version=command.expected_version,
            break_glass=break_glass,
            request_id=request_id,
        )

    def submit_unkill(
        self,
        principal: Principal,
        key: str,
        environments: Sequence[str] | None,
        *,
        reason: str,
        break_glass: str | None = None,
        request_id: str | None = None,
    ) -> UnkillOutcome:
        """Lift the kill of ``key`` in ``environments`` (None: every environment the
        principal covers): at once, in one transaction, where the environment is not
        gated; as one change request per gated environment where the flag is killed
        (or, with ``break_glass``, at once with a review item each). Raises as
        ``submit``; ``ValidationError`` for an empty reason."""
        principal.allow(Operation.UNKILL)
        validate_flag_key(key)
        principal.check_flag(key)
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("reason is required and must not be empty", field="reason")
        if environments is None:
            names = [e.name for e in self.flags.list_environments() if principal.covers(e.name)]
        else:
            for env in environments:
                validate_environment_name(env, "environments")
            principal.check_envs(environments)
            names = sorted(set(environments))
        self._check_break_glass(principal, break_glass)
        gated = [env for env in names if self.requests.policy(env).gated]
        now = [env for env in names if env not in gated]
        states: dict[str, FlagState] = {}
        if now:
            outcome = self.flags.unkill(
                key, now, reason=reason, actor=principal.actor, request_id=request_id
            )
            states.update(outcome.states)
        held: dict[str, Submitted] = {}
        for env in gated:
            submitted = self.submit(
                principal,
                ChangeKind.UNKILL,
                key,
                env,
                reason=reason,
                break_glass=break_glass,
                request_id=request_id,
            )
            if submitted.state is not None:
                states[env] = submitted.state
            held[env] = submitted
        return UnkillOutcome(states, held)

    def submit_plan(
        self,
        principal: Principal,
        kind: ChangeKind,
        key: str,
        environment: str,
        body: Mapping[str, Any],
        *,
        reason: str | None = None,
        break_glass: str | None = None,
        request_id: str | None = None,
    ) -> Submitted | None:
        """Gate a new plan or schedule (``body`` as ``POST .../plans`` takes it, already
        parsed by the caller). Creating one raises risk (``creation_risk``): in a gated
        environment the whole plan becomes one change request (or, with
        ``break_glass``, is created at once and opens a review item). Returns None when
        the environment is not gated: the caller creates the plan as it always did.
        Once approved, a plan's stages run on their own; its guard rollbacks lower
        risk and never wait.
        """
        if kind not in PLAN_KINDS:
            raise ValidationError(f"{kind.value} is not a plan kind", field="kind")
        self._check(principal, kind, key, environment)
        self._check_break_glass(principal, break_glass)
        if not self.requests.policy(environment).gated:
            return None
        before = self.flags.get_state(key, environment)
        return self._hold(
            principal, kind, key, environment, StateChange(), before, reason, break_glass,
            request_id, plan=body,
        )  # fmt: skip

    def _check_break_glass(self, principal: Principal, break_glass: str | None) -> None:
        if break_glass is not None and principal.role is not Role.ADMIN:
            raise ForbiddenError(
                f"token {principal.name!r} has role {principal.role.value!r}; only an "
                "admin may break glass",
                field="break_glass",
            )

    def _hold(
        self,
        principal: Principal,
        kind: ChangeKind,
        key: str,
        environment: str,
        change: StateChange,
        before: FlagState,
        reason: str | None,
        break_glass: str | None,
        request_id: str | None,
        *,
        plan: Mapping[str, Any] | None = None,
    ) -> Submitted:
        person = person_of(principal)
        if break_glass is not None:
            state, review = self.requests.break_glass(
                kind,
                key,
                environment,
                change,
                actor=principal.actor,
                person=person,
                reason=break_glass,
                expected_version=before.version,
                request_id=request_id,
                plan=plan,
            )
            return Submitted(Risk.RAISES, state=state, review=review)
        request = self.requests.create(
            kind,
            key,
            environment,
            change,
            author=principal.actor,
            person=person,
            reason=reason,
            expected_version=before.version,
            plan=plan,
        )
        return Submitted(Risk.RAISES, request=request)

    def _apply_now(
        self,
        principal: Principal,
        kind: ChangeKind,
        key: str,
        environment: str,
        change: StateChange,
        before: FlagState,
        reason: str | None,
        request_id: str | None,
    ) -> FlagState:
        """Apply an ungated change only from the state it was judged against."""
        if kind is ChangeKind.UNKILL:
            if not before.killed:
                return before
            outcome = self.flags.unkill(
                key,
                [environment],
                reason=reason or "unkill",
                actor=principal.actor,
                request_id=request_id,
            )
            return outcome.states[environment]
        return self.flags.update_state(
            key,
            environment,
            change,
            actor=principal.actor,
            expected_version=before.version,
            reason=reason,
            request_id=request_id,
        )

    # ------------------------------------------------------------ requests
    def _visible(self, principal: Principal, request_id: int) -> ChangeRequest:
        principal.allow(Operation.READ)
        request = self.requests.get(request_id)
        if not principal.covers(request.environment):
            # Out of scope reads as absent, as a flag out of scope does.
            raise ChangeRequestNotFoundError(
                f"change request {request_id} does not exist", field="id"
            )
        return request

    def list_requests(
        self,
        principal: Principal,
        *,
        status: Sequence[RequestStatus] | None = None,
        environment: str | None = None,
        flag: str | None = None,
        limit: int = 100,
    ) -> list[ChangeRequest]:
        principal.allow(Operation.READ)
        if environment is not None:
            validate_environment_name(environment)
        return self.requests.list_requests(
            status=status, environment=environment, flag=flag, scope=principal.scope, limit=limit
        )

    def get_request(self, principal: Principal, request_id: int) -> ChangeRequest:
        return self._visible(principal, request_id)

    def edit(
        self,
        principal: Principal,
        request_id: int,
        change: StateChange,
        *,
        reason: str | None = None,
    ) -> ChangeRequest:
        """Replace a pending request's change (author only); its approvals drop."""
        request = self._visible(principal, request_id)
        self._check(principal, request.kind, request.flag, request.environment)
        return self.requests.edit(request_id, change, person=person_of(principal), reason=reason)

    def approve(
        self,
        principal: Principal,
        request_id: int,
        *,
        apply: bool = True,
        request_id_header: str | None = None,
    ) -> ChangeRequest:
        """Approve as ``principal``'s person; with ``apply`` (the default), the approval
        that completes the count applies the request at once."""
        request = self._visible(principal, request_id)
        self._check(principal, request.kind, request.flag, request.environment)
        approved = self.requests.approve(
            request_id, approver=principal.actor, person=person_of(principal)
        )
        if apply and approved.status is RequestStatus.APPROVED:
            approved, _ = self.requests.apply(
                request_id, actor=principal.actor, request_id_header=request_id_header
            )
        return approved

    def reject(
        self, principal: Principal, request_id: int, *, reason: str | None = None
    ) -> ChangeRequest:
        request = self._visible(principal, request_id)
        self._check(principal, request.kind, request.flag, request.environment)
        return self.requests.decide(
            request_id, RequestStatus.REJECTED, actor=principal.actor, reason=reason
        )

    def cancel(
        self, principal: Principal, request_id: int, *, reason: str | None = None
    ) -> ChangeRequest:
        """Withdraw a request: its author, or an admin."""
        request = self._visible(principal, request_id)
        if person_of(principal) != request.author_person and principal.role is not Role.ADMIN:
            raise ForbiddenError(
                f"only the author of change request {request_id} or an admin may cancel it",
                field="id",
            )
        return self.requests.decide(
            request_id, RequestStatus.CANCELLED, actor=principal.actor, reason=reason
        )

    def apply(
        self, principal: Principal, request_id: int, *, request_id_header: str | None = None
    ) -> ChangeRequest:
        """Apply an approved request (raises ``StaleChangeRequestError`` when the flag
        moved since it was made)."""
        request = self._visible(principal, request_id)
        self._check(principal, request.kind, request.flag, request.environment)
        applied, _ = self.requests.apply(
            request_id, actor=principal.actor, request_id_header=request_id_header
        )
        return applied

    # ------------------------------------------------------------ break-glass reviews
    def reviews(self, principal: Principal, *, open_only: bool = True) -> list[ReviewItem]:
        principal.allow(Operation.READ)
        return self.requests.reviews(open_only=open_only, scope=principal.scope)

    def acknowledge(self, principal: Principal, item_id: int) -> ReviewItem:
        """A second person (not the one who broke the glass) closes a review item."""
        principal.allow(Operation.SET_STATE)
        item = self.requests.review(item_id)
        principal.check_env(item.environment)
        principal.check_flag(item.flag)
        return self.requests.acknowledge(
            item_id, actor=principal.actor, person=person_of(principal)
        )
