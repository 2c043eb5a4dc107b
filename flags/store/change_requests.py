"""Change requests, approvals, environment policies and break-glass review items: SQL only.

A raising change in an environment whose policy requires approvals does not apply:
it is stored as a ``ChangeRequest`` against the flag state's version at that moment
(``base_version``). Its life::

    pending ──approve (enough distinct people)──▶ approved ──apply──▶ applied
       │  ▲                                          │
       │  └────────────── edit (drops approvals) ────┤
       ├─ reject / cancel ─▶ rejected / cancelled ◀──┤
       └─ flag moved since base_version ─▶ stale ◀───┘

Rules held here, inside the transactions that change a request (so no race slips
through): approvals count per *person* (one row per request revision and person:
a second token of the same person is refused); the author never approves unless the
environment's policy allows self-approval; an edit starts a new revision, so the
earlier approvals no longer count; approving or applying a request whose flag moved
since ``base_version`` marks it ``stale`` and refuses. ``apply`` writes the flag
state, its history row (naming the request, its author and approvers) and the
request's new status in one transaction. ``break_glass`` writes a change, its
history row (recorded as break-glass with the reason) and an open ``ReviewItem`` in
one transaction; the item stays open until a person other than the one who broke
the glass acknowledges it.

Who may act (roles, scopes, who a person is) is ``api.service.approvals``'s rule.

The tables are in ``flags.store.tables`` (migration ``0010_approvals``).

Thread-safe: every call runs in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from flags.errors import (
    ChangeRequestNotFoundError,
    ChangeRequestStateError,
    ConflictError,
    ForbiddenError,
    ReviewItemNotFoundError,
    SelfApprovalError,
    StaleChangeRequestError,
    ValidationError,
    VersionConflictError,
)
from flags.history import Actor, utc
from flags.model import (
    Action,
    FlagChanged,
    FlagState,
    StateChange,
    validate_environment_name,
    validate_flag_key,
)
from flags.risk import movements
from flags.store import history as history_log
from flags.store.sql import SqlFlagStore
from flags.store.tables import (
    change_request_approvals,
    change_requests,
    environment_policies,
    review_items,
)

__all__ = [
    "MAX_APPROVALS",
    "POLICY_ACTION",
    "Approval",
    "ChangeKind",
    "ChangeRequest",
    "ChangeRequestNotFoundError",
    "ChangeRequestStateError",
    "ChangeRequestStore",
    "PlanWriter",
    "Policy",
    "RequestStatus",
    "ReviewItem",
    "ReviewItemNotFoundError",
    "SelfApprovalError",
    "StaleChangeRequestError",
    "change_from_dict",
    "change_to_dict",
    "target_state",
    "validate_policy",
]

MAX_APPROVALS = 5
POLICY_ACTION = "environment.policy"
BREAK_GLASS_PREFIX = "break-glass: "


# ------------------------------------------------------------ values
class RequestStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    APPLIED = "applied"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    STALE = "stale"


OPEN = (RequestStatus.PENDING, RequestStatus.APPROVED)


class ChangeKind(StrEnum):
    """What a request changes: a flag state (``StateChange``), an unkill, or a new
    rollout plan or schedule (its body, created by a ``PlanWriter`` when applied)."""

    STATE = "state"
    UNKILL = "unkill"
    PLAN = "plan"
    SCHEDULE = "schedule"


PLAN_KINDS = (ChangeKind.PLAN, ChangeKind.SCHEDULE)


class PlanWriter(Protocol):
    """Creates a plan or schedule on the caller's connection, inside its transaction,
    recording the plan's own history row(s) there; returns the events to publish after
    the commit. Raises the plan store's errors (``PlanStateError``, ...)."""

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
    ) -> Sequence[FlagChanged]: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """An environment's approval policy; the default (0 approvals) gates nothing."""

    environment: str
    required_approvals: int = 0
    allow_self_approval: bool = False

    @property
    def gated(self) -> bool:
        return self.required_approvals > 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "required_approvals": self.required_approvals,
            "allow_self_approval": self.allow_self_approval,
        }


def validate_policy(environment: str, required_approvals: object, allow_self: object) -> Policy:
    """A ``Policy`` from raw values; raises ``ValidationError`` naming the field."""
    validate_environment_name(environment)
    if type(required_approvals) is not int or not 0 <= required_approvals <= MAX_APPROVALS:
        raise ValidationError(
            f"required_approvals must be an integer from 0 to {MAX_APPROVALS}, "
            f"got {required_approvals!r:.20}",
            field="required_approvals",
        )
    if type(allow_self) is not bool:
        raise ValidationError(
            f"allow_self_approval must be a boolean, got {allow_self!r:.20}",
            field="allow_self_approval",
        )
    return Policy(environment, required_approvals, allow_self)


@dataclass(frozen=True, slots=True)
class Approval:
    """One person's approval of one revision of a request."""

    person: str
    actor: str
    token_id: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "person": self.person,
            "actor": self.actor,
            "token_id": self.token_id,
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """A held change. ``approvals`` are those of the current ``revision`` only."""

    id: int
    kind: ChangeKind
    flag: str
    environment: str
    change: StateChange
    base_version: int
    before: FlagState
    after: FlagState
    status: RequestStatus
    revision: int
    reason: str | None
    author: str
    author_person: str
    author_token_id: str | None
    required_approvals: int
    approvals: tuple[Approval, ...]
    created_at: datetime
    updated_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision_reason: str | None = None
    plan: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; ``diff`` lists every moved field with its direction (empty for
        a plan or schedule, whose ``plan`` body is what is reviewed)."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "flag": self.flag,
            "environment": self.environment,
            "change": change_to_dict(self.change),
            "plan": dict(self.plan) if self.plan is not None else None,
            "base_version": self.base_version,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "diff": [m.to_dict() for m in movements(self.before, self.after)],
            "status": self.status.value,
            "revision": self.revision,
            "reason": self.reason,
            "author": self.author,
            "author_person": self.author_person,
            "required_approvals": self.required_approvals,
            "approvals": [a.to_dict() for a in self.approvals],
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decision_reason": self.decision_reason,
        }


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """A break-glass change awaiting a second person's acknowledgement."""

    id: int
    flag: str
    environment: str
    before: FlagState
    after: FlagState
    reason: str
    actor: str
    person: str
    created_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.acknowledged_at is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "flag": self.flag,
            "environment": self.environment,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "diff": [m.to_dict() for m in movements(self.before, self.after)],
            "reason": self.reason,
            "actor": self.actor,
            "person": self.person,
            "created_at": self.created_at.isoformat(),
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": self.acknowledged_at.isoformat() if self.acknowledged_at else None,
            "open": self.open,
        }


# ------------------------------------------------------------ StateChange <-> JSON
SET_FIELDS = ("tenants_on", "tenants_off")
EDIT_FIELDS = ("tenants_on_add", "tenants_on_remove", "tenants_off_add", "tenants_off_remove")


def change_to_dict(change: StateChange) -> dict[str, Any]:
    """The JSON form of a ``StateChange``: only the fields it sets, tenant sets sorted."""
    out: dict[str, Any] = {}
    for name in ("enabled", "rollout", "off_variant", "on_variant"):
        if (value := getattr(change, name)) is not None:
            out[name] = value
    for name in SET_FIELDS:
        if (value := getattr(change, name)) is not None:
            out[name] = sorted(value)
    for name in EDIT_FIELDS:
        if value := getattr(change, name):
            out[name] = sorted(value)
    if change.split is not None:
        out["split"] = [[n, w] for n, w in change.split]
    if change.tenant_variants is not None:
        out["tenant_variants"] = [[t_, v] for t_, v in change.tenant_variants]
    return out


def change_from_dict(data: Mapping[str, Any]) -> StateChange:
    """Read ``change_to_dict``'s form back (stored values; not for user input)."""
    fields: dict[str, Any] = {}
    for name in ("enabled", "rollout", "off_variant", "on_variant"):
        if name in data:
            fields[name] = data[name]
    for name in (*SET_FIELDS, *EDIT_FIELDS):
        if name in data:
            fields[name] = frozenset(data[name])
    for name in ("split", "tenant_variants"):
        if name in data:
            fields[name] = tuple(tuple(pair) for pair in data[name])
    return StateChange(**fields)


def _now() -> datetime:
    return datetime.now(UTC)


def target_state(kind: ChangeKind, change: StateChange, before: FlagState) -> FlagState:
    """The state ``kind``/``change`` makes of ``before`` (same version). Raises
    ``ValidationError`` when the change does not fit the flag."""
    if kind is ChangeKind.UNKILL:
        return replace(before, killed=False, kill_reason=None, killed_at=None, killed_by=None)
    if kind in PLAN_KINDS:
        return before  # a plan changes nothing now; its stages act later
    return change.apply(before)


class ChangeRequestStore:
    """Change requests, policies and review items on the database of a ``SqlFlagStore``.

    Constructing it does no I/O. ``plans`` creates held plans and schedules when they
    apply (without it, applying one raises ``ChangeRequestStateError``); ``clock``
    returns aware UTC datetimes.
    """

    def __init__(
        self,
        flags: SqlFlagStore,
        *,
        plans: PlanWriter | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.flags = flags
        self.plans = plans
        self.clock = clock

    # ------------------------------------------------------------ policies
    def policy(self, environment: str) -> Policy:
        """The policy of ``environment``; the default when none was set."""
        with self.flags.read() as conn:
            return self._policy(conn, environment)

    @staticmethod
    def _policy(conn: Connection, environment: str) -> Policy:
        row = conn.execute(
            select(environment_policies).where(environment_policies.c.environment == environment)
        ).first()
        if row is None:
            return Policy(environment)
        return Policy(environment, int(row.required_approvals), bool(row.allow_self_approval))

    def policies(self) -> list[Policy]:
        """Every policy that was set, by environment."""
        with self.flags.read() as conn:
            rows = conn.execute(
                select(environment_policies).order_by(environment_policies.c.environment)
            ).all()
        return [
            Policy(r.environment, int(r.required_approvals), bool(r.allow_self_approval))
            for r in rows
        ]

    def set_policy(
        self, policy: Policy, *, actor: str | Actor, request_id: str | None = None
    ) -> Policy:
        """Store ``policy`` with its history row (action ``environment.policy``) in one
        transaction. Raises ``EnvironmentNotFoundError``."""
        with self.flags.transaction() as conn:
            self.flags._check_environments(conn, [policy.environment])
            before = self._policy(conn, policy.environment)
            if before == policy:
                return policy
            values = {
                "required_approvals": policy.required_approvals,
                "allow_self_approval": policy.allow_self_approval,
                "updated_at": self.clock(),
                "updated_by": str(actor),
            }
            done = conn.execute(
                update(environment_policies)
                .where(environment_policies.c.environment == policy.environment)
                .values(**values)
            )
            if done.rowcount == 0:
                conn.execute(
                    insert(environment_policies).values(environment=policy.environment, **values)
                )
            history_log.record_change(
                conn,
                actor=actor,
                action=POLICY_ACTION,
                environment=policy.environment,
                before=before.to_dict(),
                after=policy.to_dict(),
                request_id=request_id,
                at=values["updated_at"],
            )
        return policy

    # ------------------------------------------------------------ requests
    def create(
        self,
        kind: ChangeKind,
        key: str,
        environment: str,
        change: StateChange,
        *,
        author: Actor,
        person: str,
        reason: str | None,
        expected_version: int | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> ChangeRequest:
        """Hold ``change`` of ``key`` in ``environment`` as a pending request against the
        flag's current version (``expected_version``, when given, must be it). A plan or
        schedule request holds its body, ``plan``, instead of a change.

        Raises ``FlagNotFoundError``, ``EnvironmentNotFoundError``, ``ConflictError``
        (archived flag), ``VersionConflictError``, ``ValidationError`` (the change does
        not fit the flag).
        """
        validate_flag_key(key)
        validate_environment_name(environment)
        if (kind in PLAN_KINDS) != (plan is not None):
            raise ValidationError("a plan or schedule request holds its body", field="plan")
        with self.flags.transaction() as conn:
            before = self._current(conn, key, environment, expected_version)
            after = target_state(kind, change, before)
            policy = self._policy(conn, environment)
            now = self.clock()
            request_id = conn.execute(
                insert(change_requests)
                .values(
                    kind=kind.value,
                    flag_key=key,
                    environment=environment,
                    change={"plan": dict(plan)} if plan is not None else change_to_dict(change),
                    base_version=before.version,
                    before=before.to_dict(),
                    after=after.to_dict(),
                    status=RequestStatus.PENDING.value,
                    revision=1,
                    reason=reason,
                    author=author.name,
                    author_person=person,
                    author_token_id=author.token_id,
                    author_token_name=author.token_name,
                    required_approvals=max(policy.required_approvals, 1),
                    created_at=now,
                    updated_at=now,
                )
                .returning(change_requests.c.id)
            ).scalar_one()
            return self._load(conn, int(request_id))

    def _current(
        self, conn: Connection, key: str, environment: str, expected_version: int | None
    ) -> FlagState:
        flag, state = self.flags.lock_state(conn, key, environment)
        if flag.archived:
            raise ConflictError(f"flag {key!r} is archived", field="key")
        if expected_version is not None and expected_version != state.version:
            raise VersionConflictError(
                f"flag {key!r} in {environment!r} is at version {state.version}, "
                f"not {expected_version}",
                current=state.to_dict(),
                field="If-Match",
            )
        return state

    def get(self, request_id: int) -> ChangeRequest:
        """Raises ``ChangeRequestNotFoundError``."""
        with self.flags.read() as conn:
            return self._load(conn, request_id)

    def list_requests(
        self,
        *,
        status: Sequence[RequestStatus] | None = None,
        environment: str | None = None,
        flag: str | None = None,
        scope: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[ChangeRequest]:
        """Requests, newest first, filtered; ``scope`` limits them to those environments."""
        if type(limit) is not int or not 0 < limit <= 500:
            raise ValidationError("limit must be an integer from 1 to 500", field="limit")
        stmt = select(change_requests.c.id).order_by(change_requests.c.id.desc()).limit(limit)
        if status is not None:
            stmt = stmt.where(change_requests.c.status.in_([s.value for s in status]))
        if environment is not None:
            stmt = stmt.where(change_requests.c.environment == environment)
        if flag is not None:
            stmt = stmt.where(change_requests.c.flag_key == flag)
        if scope is not None:
            stmt = stmt.where(change_requests.c.environment.in_(list(scope)))
        with self.flags.read() as conn:
            ids = conn.execute(stmt).scalars().all()
            return [self._load(conn, int(i)) for i in ids]

    def _load(self, conn: Connection, request_id: int, *, lock: bool = False) -> ChangeRequest:
        stmt = select(change_requests).where(change_requests.c.id == request_id)
        if lock and self.flags.is_postgres:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            raise ChangeRequestNotFoundError(
                f"change request {request_id} does not exist", field="id"
            )
        approvals = conn.execute(
            select(change_request_approvals)
            .where(
                change_request_approvals.c.request_id == request_id,
                change_request_approvals.c.revision == row.revision,
            )
            .order_by(change_request_approvals.c.at, change_request_approvals.c.person)
        ).all()
        kind = ChangeKind(row.kind)
        plan = row.change.get("plan") if kind in PLAN_KINDS else None
        return ChangeRequest(
            id=int(row.id),
            kind=kind,
            flag=row.flag_key,
            environment=row.environment,
            change=StateChange() if plan is not None else change_from_dict(row.change),
            plan=plan,
            base_version=int(row.base_version),
            before=FlagState.from_dict(row.before),
            after=FlagState.from_dict(row.after),
            status=RequestStatus(row.status),
            revision=int(row.revision),
            reason=row.reason,
            author=row.author,
            author_person=row.author_person,
            author_token_id=row.author_token_id,
            required_approvals=int(row.required_approvals),
            approvals=tuple(Approval(a.person, a.actor, a.token_id, utc(a.at)) for a in approvals),
            created_at=utc(row.created_at),
            updated_at=utc(row.updated_at),
            decided_by=row.decided_by,
            decided_at=utc(row.decided_at) if row.decided_at else None,
            decision_reason=row.decision_reason,
        )

    def _set(self, conn: Connection, request: ChangeRequest, **values: Any) -> None:
        conn.execute(
            update(change_requests)
            .where(change_requests.c.id == request.id)
            .values(updated_at=self.clock(), **values)
        )

    def _open(self, conn: Connection, request_id: int, step: str) -> ChangeRequest:
        request = self._load(conn, request_id, lock=True)
        if request.status not in OPEN:
            raise ChangeRequestStateError(
                f"change request {request_id} is {request.status.value}; cannot {step} it",
                field="status",
            )
        return request

    def _moved(self, conn: Connection, request: ChangeRequest) -> bool:
        """Whether the flag moved since the request's base version (then mark it stale)."""
        _, state = self.flags.lock_state(conn, request.flag, request.environment)
        if state.version == request.base_version:
            return False
        self._set(
            conn,
            request,
            status=RequestStatus.STALE.value,
            decision_reason=f"flag moved to version {state.version} from {request.base_version}",
        )
        return True

    @staticmethod
    def _stale(request: ChangeRequest) -> StaleChangeRequestError:
        return StaleChangeRequestError(
            f"change request {request.id} is stale: flag {request.flag!r} in "
            f"{request.environment!r} changed since version {request.base_version}",
            field="id",
        )

    def edit(
        self,
        request_id: int,
        change: StateChange,
        *,
        person: str,
        reason: str | None = None,
    ) -> ChangeRequest:
        """Replace an open request's change (its author only). Starts a new revision,
        so every earlier approval stops counting, and rebases it on the flag's current
        version; an approved request is pending again. Raises
        ``ChangeRequestNotFoundError``, ``ChangeRequestStateError``, ``ForbiddenError``
        (not the author), ``ValidationError``."""
        with self.flags.transaction() as conn:
            request = self._open(conn, request_id, "edit")
            if request.kind is not ChangeKind.STATE:
                raise ChangeRequestStateError(
                    f"change request {request_id} holds a {request.kind.value}; only state "
                    "changes can be edited (cancel it and make a new one)",
                    field="kind",
                )
            if person != request.author_person:
                raise ForbiddenError(
                    f"only the author of change request {request_id} may edit it",
                    field="id",
                )
            before = self._current(conn, request.flag, request.environment, None)
            after = target_state(request.kind, change, before)
            self._set(
                conn,
                request,
                change=change_to_dict(change),
                base_version=before.version,
                before=before.to_dict(),
                after=after.to_dict(),
                status=RequestStatus.PENDING.value,
                revision=request.revision + 1,
                reason=request.reason if reason is None else reason,
            )
            return self._load(conn, request_id)

    def approve(self, request_id: int, *, approver: Actor, person: str) -> ChangeRequest:
        """Record ``person``'s approval of the current revision; with enough distinct
        people the request is ``approved``.

        Raises ``SelfApprovalError`` (the author, unless the environment's policy
        allows it), ``ChangeRequestStateError`` (not open, or this person already
        approved this revision, whichever token they use), ``StaleChangeRequestError``
        (the flag moved: the request is now ``stale``), ``ChangeRequestNotFoundError``.
        """
        stale: ChangeRequest | None = None
        with self.flags.transaction() as conn:
            request = self._open(conn, request_id, "approve")
            if request.status is RequestStatus.APPROVED:
                raise ChangeRequestStateError(
                    f"change request {request_id} is already approved", field="status"
                )
            policy = self._policy(conn, request.environment)
            if person == request.author_person and not policy.allow_self_approval:
                raise SelfApprovalError(
                    f"{person} made change request {request_id} and may not approve it "
                    f"(environment {request.environment!r} does not allow self-approval)",
                    field="id",
                )
            if any(a.person == person for a in request.approvals):
                raise ChangeRequestStateError(
                    f"{person} already approved change request {request_id}", field="id"
                )
            if self._moved(conn, request):
                stale = request
            else:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(change_request_approvals).values(
                                request_id=request_id,
                                revision=request.revision,
                                person=person,
                                actor=approver.name,
                                token_id=approver.token_id,
                                at=self.clock(),
                            )
                        )
                except IntegrityError as exc:
                    raise ChangeRequestStateError(
                        f"{person} already approved change request {request_id}", field="id"
                    ) from exc
                required = max(request.required_approvals, policy.required_approvals)
                if len(request.approvals) + 1 >= required:
                    self._set(conn, request, status=RequestStatus.APPROVED.value)
                else:
                    self._set(conn, request)
                return self._load(conn, request_id)
        raise self._stale(stale)

    def decide(
        self,
        request_id: int,
        status: RequestStatus,
        *,
        actor: str | Actor,
        reason: str | None = None,
    ) -> ChangeRequest:
        """Close an open request as ``rejected`` or ``cancelled``. Raises
        ``ChangeRequestStateError`` (not open), ``ChangeRequestNotFoundError``."""
        if status not in (RequestStatus.REJECTED, RequestStatus.CANCELLED):
            raise ValidationError("a request is decided as rejected or cancelled", field="status")
        with self.flags.transaction() as conn:
            request = self._open(
                conn, request_id, "reject" if status is RequestStatus.REJECTED else "cancel"
            )
            self._set(
                conn,
                request,
                status=status.value,
                decided_by=str(actor),
                decided_at=self.clock(),
                decision_reason=reason,
            )
            return self._load(conn, request_id)

    def apply(
        self, request_id: int, *, actor: str | Actor, request_id_header: str | None = None
    ) -> tuple[ChangeRequest, list[FlagChanged]]:
        """Apply an ``approved`` request: the flag state, its history row and the
        request's ``applied`` status commit together, and the change is published.

        The history row is recorded under the request's author (with the author's
        token) and its reason names the request, its approvers and who applied it.
        Raises ``ChangeRequestStateError`` (not approved), ``StaleChangeRequestError``
        (the flag moved since the request: it is now ``stale``, nothing else is
        written), ``ChangeRequestNotFoundError``.
        """
        stale: ChangeRequest | None = None
        with self.flags.transaction() as conn:
            request = self._load(conn, request_id, lock=True)
            if request.status is not RequestStatus.APPROVED:
                raise ChangeRequestStateError(
                    f"change request {request_id} is {request.status.value}; only an "
                    "approved request can be applied",
                    field="status",
                )
            if self._moved(conn, request):
                stale = request
            else:
                row = conn.execute(
                    select(change_requests.c.author_token_name).where(
                        change_requests.c.id == request_id
                    )
                ).scalar_one()
                author = Actor(request.author, request.author_token_id, row)
                approvers = ", ".join(a.person for a in request.approvals)
                note = f"change request {request.id}, approved by {approvers}, applied by {actor}"
                note = f"{note}: {request.reason}" if request.reason else note
                _, _, events = self._write(
                    conn,
                    request.kind,
                    request.flag,
                    request.environment,
                    request.change,
                    request.plan,
                    actor=author,
                    note=note,
                    request_id=request_id_header,
                )
                self._set(
                    conn,
                    request,
                    status=RequestStatus.APPLIED.value,
                    decided_by=str(actor),
                    decided_at=self.clock(),
                )
                applied = self._load(conn, request_id)
        if stale is not None:
            raise self._stale(stale)
        self.flags.publish(events)
        return applied, events

    def _write(
        self,
        conn: Connection,
        kind: ChangeKind,
        key: str,
        environment: str,
        change: StateChange,
        plan: Mapping[str, Any] | None,
        *,
        actor: Actor,
        note: str,
        request_id: str | None,
        expected_version: int | None = None,
    ) -> tuple[FlagState, FlagState, list[FlagChanged]]:
        """Write a held change on ``conn``: a state with its history row, or a plan
        through the ``PlanWriter``. Returns the state before, the state after (a plan:
        the same) and the events to publish after the commit."""
        before = self._current(conn, key, environment, expected_version)
        if kind in PLAN_KINDS:
            if self.plans is None or plan is None:
                raise ChangeRequestStateError(
                    f"a {kind.value} cannot be created: this server has no plan store",
                    field="kind",
                )
            events = self.plans.create_on(
                conn, key, kind, plan, actor=actor, reason=note, request_id=request_id
            )
            return before, before, list(events)
        after = replace(target_state(kind, change, before), version=before.version + 1)
        event = self.flags.write_state(
            conn,
            key,
            environment,
            before,
            after,
            action=Action.UNKILL if kind is ChangeKind.UNKILL else Action.STATE_UPDATE,
            actor=actor,
            reason=note,
            request_id=request_id,
        )
        return before, after, [event]

    # ------------------------------------------------------------ break-glass
    def break_glass(
        self,
        kind: ChangeKind,
        key: str,
        environment: str,
        change: StateChange,
        *,
        actor: Actor,
        person: str,
        reason: str,
        expected_version: int | None = None,
        request_id: str | None = None,
        plan: Mapping[str, Any] | None = None,
    ) -> tuple[FlagState, ReviewItem]:
        """Apply a gated change (or create a plan, ``plan`` its body) at once: the
        change, its history row (reason ``break-glass: <reason>``) and an open review
        item commit together. Returns the state after it and the review item.

        Raises ``ValidationError`` (empty reason, a change that does not fit),
        ``FlagNotFoundError``, ``EnvironmentNotFoundError``, ``ConflictError``,
        ``VersionConflictError``.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("break-glass needs a reason", field="reason")
        with self.flags.transaction() as conn:
            before, after, events = self._write(
                conn,
                kind,
                key,
                environment,
                change,
                plan,
                actor=actor,
                note=BREAK_GLASS_PREFIX + reason,
                request_id=request_id,
                expected_version=expected_version,
            )
            item_id = conn.execute(
                insert(review_items)
                .values(
                    flag_key=key,
                    environment=environment,
                    before=before.to_dict(),
                    after=after.to_dict(),
                    reason=reason,
                    actor=actor.name,
                    person=person,
                    token_id=actor.token_id,
                    created_at=self.clock(),
                )
                .returning(review_items.c.id)
            ).scalar_one()
            item = self._review(conn, int(item_id))
        self.flags.publish(events)
        return after, item

    def _review(self, conn: Connection, item_id: int) -> ReviewItem:
        row = conn.execute(select(review_items).where(review_items.c.id == item_id)).first()
        if row is None:
            raise ReviewItemNotFoundError(f"review item {item_id} does not exist", field="id")
        return _review_from_row(row)

    def review(self, item_id: int) -> ReviewItem:
        """Raises ``ReviewItemNotFoundError``."""
        with self.flags.read() as conn:
            return self._review(conn, item_id)

    def reviews(
        self, *, open_only: bool = True, scope: Sequence[str] | None = None
    ) -> list[ReviewItem]:
        """Break-glass review items, newest first (open ones only by default)."""
        stmt = select(review_items).order_by(review_items.c.id.desc())
        if open_only:
            stmt = stmt.where(review_items.c.acknowledged_at.is_(None))
        if scope is not None:
            stmt = stmt.where(review_items.c.environment.in_(list(scope)))
        with self.flags.read() as conn:
            return [_review_from_row(r) for r in conn.execute(stmt).all()]

    def acknowledge(self, item_id: int, *, actor: str | Actor, person: str) -> ReviewItem:
        """Close a review item. Raises ``SelfApprovalError`` (the person who broke the
        glass), ``ChangeRequestStateError`` (already acknowledged),
        ``ReviewItemNotFoundError``."""
        with self.flags.transaction() as conn:
            item = self._review(conn, item_id)
            if not item.open:
                raise ChangeRequestStateError(
                    f"review item {item_id} was acknowledged by {item.acknowledged_by}",
                    field="id",
                )
            if person == item.person:
                raise SelfApprovalError(
                    f"{person} broke the glass; a second person acknowledges it", field="id"
                )
            conn.execute(
                update(review_items)
                .where(review_items.c.id == item_id, review_items.c.acknowledged_at.is_(None))
                .values(
                    acknowledged_by=str(actor),
                    acknowledged_person=person,
                    acknowledged_at=self.clock(),
                )
            )
            return self._review(conn, item_id)


def _review_from_row(row: Any) -> ReviewItem:
    return ReviewItem(
        id=int(row.id),
        flag=row.flag_key,
        environment=row.environment,
        before=FlagState.from_dict(row.before),
        after=FlagState.from_dict(row.after),
        reason=row.reason,
        actor=row.actor,
        person=row.person,
        created_at=utc(row.created_at),
        acknowledged_by=row.acknowledged_by,
        acknowledged_at=utc(row.acknowledged_at) if row.acknowledged_at else None,
    )
