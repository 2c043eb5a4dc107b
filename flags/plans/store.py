"""PlanStore: rollout plans and scheduled changes on the flag store's database.

Every plan step runs in ONE transaction with the flag change it makes: the plan
row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serializes writers
with ``BEGIN IMMEDIATE``), its ``version`` compared with the one the caller
decided on, the flag state written with its history row (actor ``plan:<id>``),
and the plan row moved to its next stage. A crash before the commit leaves
neither; a second scheduler that decided on the same version finds it moved on
and does nothing. So a stage is applied exactly once, however many replicas run.

Driver errors become ``StoreUnavailableError`` (through ``SqlFlagStore.transaction``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    insert,
    select,
    update,
)

from flags.errors import ConflictError, PlanNotFoundError, PlanStateError, ValidationError
from flags.history import Actor
from flags.model import Action, FlagChanged, FlagState, StateChange
from flags.plans import model as m
from flags.plans.model import (
    ApplyStage,
    Complete,
    Observation,
    Plan,
    PlanAction,
    PlanKind,
    PlanSpec,
    PlanStatus,
    RollBack,
    Step,
    Stop,
    Wait,
)
from flags.store import history as history_log
from flags.store.sql import SqlFlagStore
from flags.store.tables import plans

__all__ = ["Clock", "PlanStore", "StepHook", "plans", "utc_now"]

Clock = Callable[[], datetime]
# Called inside a step's transaction, after its writes and before the commit.
StepHook = Callable[[Plan, Step], None]


_BLOCKING = (PlanStatus.PENDING.value, PlanStatus.RUNNING.value, PlanStatus.PAUSED.value)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _parse_spec(kind: PlanKind, spec: Any) -> PlanSpec:
    return m.parse_schedule(spec) if kind is PlanKind.SCHEDULE else m.parse_plan(spec)


def _check_fits(change: StateChange, state: FlagState, field: str) -> None:
    """Raise ``ValidationError`` (field ``<field>.<its field>``) unless ``change``'s
    variant fields fit the flag ``state`` belongs to (declared variants, a typed flag)."""
    try:
        change.apply(state)
    except ValidationError as exc:
        raise ValidationError(
            f"{field}: {exc.message}", field=f"{field}.{exc.field}" if exc.field else field
        ) from exc


def _plan_from_row(row: Any) -> Plan:
    kind = PlanKind(row.kind)
    spec = _parse_spec(kind, row.spec)
    return Plan(
        id=int(row.id),
        kind=kind,
        flag=row.flag_key,
        environment=row.environment,
        stages=spec.stages,
        guards=spec.guards,
        status=PlanStatus(row.status),
        stage=row.stage,
        stage_started_at=_utc(row.stage_started_at),
        start_at=_utc(row.start_at),
        created_at=_utc(row.created_at),  # type: ignore[arg-type]
        created_by=row.created_by,
        updated_at=_utc(row.updated_at),  # type: ignore[arg-type]
        reason=row.reason,
        version=int(row.version),
    )


class PlanStore:
    """Plans stored beside the flags of ``flags`` (same database, same transactions).

    Thread-safe like ``SqlFlagStore``. ``clock`` gives the time of every write
    (tests inject a fake one). ``step_hook`` runs inside each step's transaction,
    before the commit: a test seam to crash a process mid-step.
    """

    def __init__(
        self,
        flags: SqlFlagStore,
        *,
        clock: Clock = utc_now,
        step_hook: StepHook | None = None,
    ) -> None:
        self.flags = flags
        self.clock = clock
        self.step_hook = step_hook

    # ------------------------------------------------------------ reads
    def get(self, plan_id: int) -> Plan:
        """Raises ``PlanNotFoundError``."""
        with self.flags.read() as conn:
            row = conn.execute(select(plans).where(plans.c.id == plan_id)).first()
        if row is None:
            raise PlanNotFoundError(f"plan {plan_id} does not exist", field="id")
        return _plan_from_row(row)

    def list_for_flag(self, key: str, *, scope: Sequence[str] | None = None) -> list[Plan]:
        """Plans and schedules of ``key``, newest first, limited to ``scope`` environments."""
        stmt = select(plans).where(plans.c.flag_key == key).order_by(plans.c.id.desc())
        if scope is not None:
            stmt = stmt.where(plans.c.environment.in_(list(scope)))
        with self.flags.read() as conn:
            return [_plan_from_row(r) for r in conn.execute(stmt).all()]

    def list_recent(self, *, scope: Sequence[str] | None = None, limit: int = 100) -> list[Plan]:
        """Every flag's plans and schedules, newest first, at most ``limit``, limited to
        ``scope`` environments (the console's plans page, #15)."""
        stmt = select(plans).order_by(plans.c.id.desc()).limit(limit)
        if scope is not None:
            stmt = stmt.where(plans.c.environment.in_(list(scope)))
        with self.flags.read() as conn:
            return [_plan_from_row(r) for r in conn.execute(stmt).all()]

    def active(self) -> list[Plan]:
        """Pending and running plans (those the scheduler acts on), oldest first."""
        stmt = (
            select(plans)
            .where(plans.c.status.in_([PlanStatus.PENDING.value, PlanStatus.RUNNING.value]))
            .order_by(plans.c.id)
        )
        with self.flags.read() as conn:
            return [_plan_from_row(r) for r in conn.execute(stmt).all()]

    # ------------------------------------------------------------ writes
    def create(
        self,
        key: str,
        spec: PlanSpec,
        *,
        actor: str | Actor,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> Plan:
        """Store a plan (or schedule) for ``key`` and, unless it starts later, apply its
        first stage in the same transaction.

        Raises ``FlagNotFoundError``, ``EnvironmentNotFoundError``, ``ConflictError``
        (archived flag), ``PlanStateError`` (a plan on a killed flag, or another plan
        pending, running or paused on the same flag and environment).
        """
        events: list[FlagChanged] = []
        with self.flags.transaction() as conn:
            plan = self.create_on(
                conn, key, spec, actor=actor, events=events, request_id=request_id, now=now
            )
        self.flags.publish(events)
        return plan

    def create_on(
        self,
        conn: Connection,
        key: str,
        spec: PlanSpec,
        *,
        actor: str | Actor,
        events: list[FlagChanged],
        request_id: str | None = None,
        now: datetime | None = None,
        reason: str | None = None,
    ) -> Plan:
        """``create`` inside the caller's transaction on ``conn`` (an approved change
        request applies a held plan this way, #16): the events to publish after the
        commit are appended to ``events``; ``reason`` goes on the plan's history row.
        Raises as ``create``."""
        now = now or self.clock()
        flag, state = self.flags.lock_state(conn, key, spec.environment)
        if flag.archived:
            raise ConflictError(f"flag {key!r} is archived", field="key")
        if spec.kind is PlanKind.PLAN:
            if state.killed:
                raise PlanStateError(
                    f"flag {key!r} is killed in {spec.environment!r}; unkill it before "
                    "starting a plan",
                    field="environment",
                )
            self._check_no_other_plan(conn, key, spec.environment, None)
        for index, stage in enumerate(spec.stages):
            if stage.change.split is not None or stage.change.tenant_variants is not None:
                # A variant change must fit the flag's variants now, not fail at its stage.
                _check_fits(
                    stage.change,
                    state,
                    "change" if spec.kind is PlanKind.SCHEDULE else f"stages.{index}",
                )
        body = m.spec_to_dict(spec)
        result = conn.execute(
            insert(plans).values(
                kind=spec.kind.value,
                flag_key=key,
                environment=spec.environment,
                spec=body,
                status=PlanStatus.PENDING.value,
                stage=None,
                stage_started_at=None,
                start_at=spec.start_at,
                reason=None,
                created_at=now,
                created_by=str(actor),
                updated_at=now,
                version=0,
            )
        )
        plan = Plan(
            id=int(result.inserted_primary_key[0]),
            kind=spec.kind,
            flag=key,
            environment=spec.environment,
            stages=spec.stages,
            guards=spec.guards,
            status=PlanStatus.PENDING,
            stage=None,
            stage_started_at=None,
            start_at=spec.start_at,
            created_at=now,
            created_by=str(actor),
            updated_at=now,
        )
        history_log.record_change(
            conn,
            actor=actor,
            action=PlanAction.CREATE,
            flag=key,
            environment=spec.environment,
            after={"plan": plan.id, **body},
            reason=reason,
            request_id=request_id,
        )
        step = m.next_action(plan, now, Observation())
        if not isinstance(step, Wait):
            plan = self._step(conn, plan, step, now, request_id, events)
        return plan

    def execute(
        self,
        plan: Plan,
        step: Step,
        *,
        now: datetime | None = None,
        request_id: str | None = None,
    ) -> Plan | None:
        """Take ``step`` (as ``next_action`` decided on ``plan``) in one transaction.

        Returns the plan after it, or None, writing nothing, when the stored plan is
        no longer at ``plan.version`` (someone else acted first).
        """
        if isinstance(step, Wait):
            return plan
        now = now or self.clock()
        events: list[FlagChanged] = []
        with self.flags.transaction() as conn:
            current = self._lock(conn, plan.id)
            if current.version != plan.version:
                return None
            after = self._step(conn, current, step, now, request_id, events)
        self.flags.publish(events)
        return after

    def pause(
        self,
        plan_id: int,
        *,
        actor: str | Actor,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> Plan:
        """Pause a pending or running plan. Raises ``PlanNotFoundError``, ``PlanStateError``."""
        return self._transition(
            plan_id,
            PlanAction.PAUSE,
            lambda plan, now, _conn: m.pause(plan, now),
            actor=actor,
            reason=reason,
            request_id=request_id,
        )

    def resume(
        self,
        plan_id: int,
        *,
        actor: str | Actor,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> Plan:
        """Resume a paused or rolled-back plan; the current hold starts again.

        Raises ``PlanStateError`` while its flag is killed, or when another plan is
        active on the same flag and environment.
        """

        def transition(plan: Plan, now: datetime, conn: Connection) -> Plan:
            _flag, state = self.flags.lock_state(conn, plan.flag, plan.environment)
            after = m.resume(plan, now, killed=state.killed)
            if plan.kind is PlanKind.PLAN:
                self._check_no_other_plan(conn, plan.flag, plan.environment, plan.id)
            return after

        return self._transition(
            plan_id,
            PlanAction.RESUME,
            transition,
            actor=actor,
            reason=reason,
            request_id=request_id,
        )

    def abort(
        self,
        plan_id: int,
        *,
        actor: str | Actor,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> Plan:
        """End a plan for good; the flag stays as it is. Raises ``PlanStateError`` when final."""
        text = reason or f"aborted by {actor}"
        return self._transition(
            plan_id,
            PlanAction.ABORT,
            lambda plan, now, _conn: m.abort(plan, now, text),
            actor=actor,
            reason=reason,
            request_id=request_id,
        )

    def advance(self, plan_id: int, *, actor: str | Actor, request_id: str | None = None) -> Plan:
        """Apply the next stage now (or complete after the last), skipping the hold.

        The stage's state change is recorded with actor ``plan:<id>`` and a reason
        naming ``actor``. Raises ``PlanStateError`` for a rolled-back or final plan.
        """
        events: list[FlagChanged] = []
        now = self.clock()
        with self.flags.transaction() as conn:
            plan = self._lock(conn, plan_id)
            step = m.advance(plan, str(actor))
            after = self._step(conn, plan, step, now, request_id, events)
        self.flags.publish(events)
        return after

    # ------------------------------------------------------------ internals
    def _lock(self, conn: Connection, plan_id: int) -> Plan:
        stmt = select(plans).where(plans.c.id == plan_id)
        if self.flags.is_postgres:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            raise PlanNotFoundError(f"plan {plan_id} does not exist", field="id")
        return _plan_from_row(row)

    def _check_no_other_plan(
        self, conn: Connection, key: str, environment: str, plan_id: int | None
    ) -> None:
        stmt = select(plans.c.id, plans.c.status).where(
            plans.c.flag_key == key,
            plans.c.environment == environment,
            plans.c.kind == PlanKind.PLAN.value,
            plans.c.status.in_(_BLOCKING),
        )
        if plan_id is not None:
            stmt = stmt.where(plans.c.id != plan_id)
        other = conn.execute(stmt).first()
        if other is not None:
            raise PlanStateError(
                f"plan {other.id} is {other.status} on flag {key!r} in {environment!r}; "
                "abort it first",
                field="environment",
            )

    def _write(self, conn: Connection, before: Plan, after: Plan) -> Plan:
        after = replace(after, version=before.version + 1)
        result = conn.execute(
            update(plans)
            .where(plans.c.id == before.id, plans.c.version == before.version)
            .values(
                status=after.status.value,
                stage=after.stage,
                stage_started_at=after.stage_started_at,
                reason=after.reason,
                updated_at=after.updated_at,
                version=after.version,
            )
        )
        if result.rowcount != 1:  # the row is locked: only a bug gets here
            raise ConflictError(f"plan {before.id} changed under its lock", field="id")
        return after

    def _write_recorded(
        self,
        conn: Connection,
        before: Plan,
        after: Plan,
        action: PlanAction,
        *,
        actor: str | Actor,
        reason: str | None,
        request_id: str | None,
        extra: dict[str, Any] | None = None,
    ) -> Plan:
        """``_write`` then ``_record``: the plan's change and its history row, in the
        caller's transaction."""
        after = self._write(conn, before, after)
        self._record(
            conn,
            after,
            action,
            actor=actor,
            before=before,
            reason=reason,
            request_id=request_id,
            extra=extra,
        )
        return after

    def _record(
        self,
        conn: Connection,
        plan: Plan,
        action: PlanAction,
        *,
        actor: str | Actor,
        before: Plan | None,
        reason: str | None,
        request_id: str | None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        def brief(p: Plan) -> dict[str, Any]:
            return {"plan": p.id, "status": p.status.value, "stage": p.stage}

        history_log.record_change(
            conn,
            actor=actor,
            action=action,
            flag=plan.flag,
            environment=plan.environment,
            before=brief(before) if before is not None else None,
            after={**brief(plan), **(extra or {})},
            reason=reason,
            request_id=request_id,
        )

    def _transition(
        self,
        plan_id: int,
        action: PlanAction,
        transition: Callable[[Plan, datetime, Connection], Plan],
        *,
        actor: str | Actor,
        reason: str | None,
        request_id: str | None,
    ) -> Plan:
        now = self.clock()
        with self.flags.transaction() as conn:
            before = self._lock(conn, plan_id)
            after = self._write_recorded(
                conn,
                before,
                transition(before, now, conn),
                action,
                actor=actor,
                reason=reason,
                request_id=request_id,
            )
        return after

    def _step(
        self,
        conn: Connection,
        plan: Plan,
        step: Step,
        now: datetime,
        request_id: str | None,
        events: list[FlagChanged],
    ) -> Plan:
        """Take ``step`` on the locked ``plan`` inside the caller's transaction."""
        if isinstance(step, ApplyStage):
            after = self._apply_stage(conn, plan, step, now, request_id, events)
        elif isinstance(step, Complete):
            after = self._finish(conn, plan, PlanStatus.COMPLETED, step.reason, now, request_id)
        elif isinstance(step, RollBack):
            after = self._roll_back(conn, plan, step, now, request_id, events)
        elif isinstance(step, Stop):
            after = self._write_recorded(
                conn,
                plan,
                replace(plan, status=PlanStatus.ABORTED, reason=step.reason, updated_at=now),
                PlanAction.ABORT,
                actor=plan.actor,
                reason=step.reason,
                request_id=request_id,
            )
        else:
            return plan
        if self.step_hook is not None:
            self.step_hook(after, step)
        return after

    def _apply_stage(
        self,
        conn: Connection,
        plan: Plan,
        step: ApplyStage,
        now: datetime,
        request_id: str | None,
        events: list[FlagChanged],
    ) -> Plan:
        flag, before = self.flags.lock_state(conn, plan.flag, plan.environment)
        if flag.archived:
            raise ConflictError(f"flag {plan.flag!r} is archived", field="key")
        candidate = step.change.apply(before)
        if candidate != before:
            state = replace(candidate, version=before.version + 1)
            events.append(
                self._write_flag_state(
                    conn, plan, before, state, Action.STATE_UPDATE, step.reason, request_id
                )
            )
        else:
            history_log.record_change(
                conn,
                actor=plan.actor,
                action=PlanAction.STAGE,
                flag=plan.flag,
                environment=plan.environment,
                after={"plan": plan.id, "stage": step.index, "state": before.to_dict()},
                reason=f"{step.reason} (already in effect)",
                request_id=request_id,
            )
        last = step.index == len(plan.stages) - 1
        if last and plan.stages[step.index].hold.total_seconds() <= 0:
            status = PlanStatus.COMPLETED
        elif plan.status is PlanStatus.PAUSED:
            status = PlanStatus.PAUSED
        else:
            status = PlanStatus.RUNNING
        after = self._write(
            conn,
            plan,
            replace(
                plan,
                status=status,
                stage=step.index,
                stage_started_at=now,
                updated_at=now,
                reason=None,
            ),
        )
        if status is PlanStatus.COMPLETED:
            what = "schedule applied" if plan.kind is PlanKind.SCHEDULE else "all stages applied"
            self._record(
                conn,
                after,
                PlanAction.COMPLETE,
                actor=plan.actor,
                before=plan,
                reason=f"plan {plan.id}: {what}",
                request_id=request_id,
            )
        return after

    def _finish(
        self,
        conn: Connection,
        plan: Plan,
        status: PlanStatus,
        reason: str,
        now: datetime,
        request_id: str | None,
    ) -> Plan:
        return self._write_recorded(
            conn,
            plan,
            replace(plan, status=status, reason=None, updated_at=now),
            PlanAction.COMPLETE,
            actor=plan.actor,
            reason=reason,
            request_id=request_id,
        )

    def _roll_back(
        self,
        conn: Connection,
        plan: Plan,
        step: RollBack,
        now: datetime,
        request_id: str | None,
        events: list[FlagChanged],
    ) -> Plan:
        if step.restore is not None:
            _flag, before = self.flags.lock_state(conn, plan.flag, plan.environment)
            candidate = step.restore.apply(before)
            if candidate != before:
                restored = replace(candidate, version=before.version + 1)
                events.append(
                    self._write_flag_state(
                        conn, plan, before, restored, Action.STATE_UPDATE, step.reason, request_id
                    )
                )
        elif step.kill:
            _flag, before = self.flags.lock_state(conn, plan.flag, plan.environment)
            if not before.killed:
                killed = replace(
                    before,
                    killed=True,
                    kill_reason=step.reason,
                    killed_at=now,
                    killed_by=plan.actor,
                    version=before.version + 1,
                )
                events.append(
                    self._write_flag_state(
                        conn, plan, before, killed, Action.KILL, step.reason, request_id
                    )
                )
        return self._write_recorded(
            conn,
            plan,
            replace(
                plan,
                status=PlanStatus.ROLLED_BACK,
                reason=step.reason,
                updated_at=now,
                stage=plan.stage if step.to_stage is None else step.to_stage,
            ),
            PlanAction.ROLL_BACK,
            actor=plan.actor,
            reason=step.reason,
            request_id=request_id,
            extra={"readings": [r.to_dict() for r in step.readings]},
        )

    def _write_flag_state(
        self,
        conn: Connection,
        plan: Plan,
        before: FlagState,
        after: FlagState,
        action: Action,
        reason: str,
        request_id: str | None,
    ) -> FlagChanged:
        """Write the state of ``plan``'s flag with its history row, as the plan's actor."""
        return self.flags.write_state(
            conn,
            plan.flag,
            plan.environment,
            before,
            after,
            action=action,
            actor=plan.actor,
            reason=reason,
            request_id=request_id,
        )
