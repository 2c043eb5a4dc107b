"""The gate, change requests and break-glass, through ApprovalService on SQLite and
PostgreSQL: gated changes hold, lowering ones apply at once, and each leak class is closed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import select

from api.service.approvals import ApprovalService, person_of
from api.service.principal import Principal
from flags.errors import ForbiddenError, ValidationError, VersionConflictError
from flags.history import HistoryQuery
from flags.model import Role, StateChange
from flags.risk import Risk
from flags.store.change_requests import (
    ChangeKind,
    ChangeRequestNotFoundError,
    ChangeRequestStateError,
    RequestStatus,
    SelfApprovalError,
    StaleChangeRequestError,
    change_from_dict,
    change_request_approvals,
    change_to_dict,
)
from flags.store.sql import SqlFlagStore
from tests.approvals.people import ENV, FLAG, token, user

ALICE = user("alice", Role.EDITOR)
BOB = user("bob", Role.EDITOR)
CAROL = user("carol", Role.EDITOR)
OPERATOR = user("olga", Role.OPERATOR)
READER = user("rita", Role.READER)


def submit(service: ApprovalService, who: Principal, change: StateChange, **kw: object):  # type: ignore[no-untyped-def]
    return service.submit(who, ChangeKind.STATE, FLAG, ENV, change, **kw)  # type: ignore[arg-type]


def history(flags: SqlFlagStore) -> list:  # type: ignore[type-arg]
    return flags.list_history(HistoryQuery(flag=FLAG, environment=ENV, limit=50)).items


class TestPolicy:
    def test_policy__default__gates_nothing(
        self, service: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """With no policy set, a raising change applies at once."""
        outcome = submit(service, ALICE, StateChange(rollout=50))
        assert outcome.state is not None and outcome.state.rollout == 50
        assert flags.get_state(FLAG, ENV).rollout == 50

    def test_set_policy__out_of_range__names_the_field(
        self, service: ApprovalService, admin: Principal
    ) -> None:
        """required_approvals is 0..5; a bad value is a ValidationError naming it."""
        for bad in (6, -1, "1", True):
            with pytest.raises(ValidationError) as err:
                service.set_policy(admin, ENV, bad)
            assert err.value.field == "required_approvals"

    def test_set_policy__non_admin_or_scoped_admin__forbidden(
        self, service: ApprovalService
    ) -> None:
        """Only an admin for every environment sets a policy."""
        with pytest.raises(ForbiddenError):
            service.set_policy(ALICE, ENV, 1)
        with pytest.raises(ForbiddenError):
            service.set_policy(token("scoped", Role.ADMIN, (ENV,)), ENV, 0)

    def test_set_policy__recorded__in_history(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """A policy change has a history row with before and after."""
        rows = flags.list_history(HistoryQuery(action="environment.policy")).items
        assert rows[0].after == {
            "environment": ENV,
            "required_approvals": 1,
            "allow_self_approval": False,
        }
        assert gated.policy(READER, ENV).required_approvals == 1


class TestGate:
    @pytest.mark.parametrize(
        "change",
        [
            StateChange(rollout=50),
            StateChange(tenants_on_add=frozenset({"acme"})),
            StateChange(tenants_off_remove=frozenset({"z"})),
        ],
        ids=["rollout up", "tenant on", "tenant off removed"],
    )
    def test_submit__raising_change_in_gated_env__held_pending(
        self, gated: ApprovalService, flags: SqlFlagStore, change: StateChange
    ) -> None:
        """A raising change (including per-tenant list edits) does not apply: it is a request."""
        if change.tenants_off_remove:
            flags.update_state(
                FLAG, ENV, StateChange(tenants_off_add=frozenset({"z"})), actor="seed"
            )
        before = flags.get_state(FLAG, ENV)
        outcome = submit(gated, ALICE, change)
        assert outcome.pending and outcome.risk is Risk.RAISES
        assert outcome.request is not None and outcome.request.status is RequestStatus.PENDING
        assert flags.get_state(FLAG, ENV) == before

    @pytest.mark.parametrize(
        "change",
        [
            StateChange(rollout=5),
            StateChange(enabled=False),
            StateChange(tenants_off_add=frozenset({"acme"})),
            StateChange(tenants_on_remove=frozenset({"a"})),
        ],
        ids=["rollout down", "disable", "tenant off", "tenant on removed"],
    )
    def test_submit__lowering_change_in_gated_env__applies_at_once(
        self, gated: ApprovalService, flags: SqlFlagStore, change: StateChange
    ) -> None:
        """Every lowering change applies at once, approvals or not."""
        if change.tenants_on_remove:
            flags.update_state(
                FLAG, ENV, StateChange(tenants_on_add=frozenset({"a"})), actor="seed"
            )
        outcome = submit(gated, ALICE, change)
        assert not outcome.pending and outcome.risk is Risk.LOWERS
        assert outcome.state == flags.get_state(FLAG, ENV)
        assert gated.list_requests(ALICE) == []

    def test_kill_then_unkill__gated__kill_at_once_unkill_held(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """A kill never waits (the store's kill path is not gated); the unkill raises and waits."""
        flags.kill(FLAG, [ENV], reason="incident", actor="olga")
        outcome = gated.submit(OPERATOR, ChangeKind.UNKILL, FLAG, ENV, reason="fixed")
        assert outcome.pending
        assert flags.get_state(FLAG, ENV).killed
        request = gated.approve(BOB, outcome.request.id)  # type: ignore[union-attr]
        assert request.status is RequestStatus.APPLIED
        assert not flags.get_state(FLAG, ENV).killed
        assert history(flags)[0].action == "unkill"

    def test_submit__mixed_change__held_as_a_whole(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """A change that lowers and raises waits whole; nothing of it applies."""
        before = flags.get_state(FLAG, ENV)
        outcome = submit(gated, ALICE, StateChange(rollout=5, tenants_on_add=frozenset({"acme"})))
        assert outcome.pending and flags.get_state(FLAG, ENV) == before

    def test_submit__reader__forbidden(self, gated: ApprovalService) -> None:
        """Submitting needs the right the change needs."""
        with pytest.raises(ForbiddenError):
            submit(gated, READER, StateChange(rollout=50))


class TestApproval:
    def test_approve__second_person__applies_with_history_naming_request(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """Another person's approval applies the change; the history row names the
        request, the author and the approver."""
        request = submit(gated, ALICE, StateChange(rollout=50), reason="ramp").request
        assert request is not None
        done = gated.approve(BOB, request.id, request_id_header="req-1")
        assert done.status is RequestStatus.APPLIED
        assert flags.get_state(FLAG, ENV).rollout == 50
        row = history(flags)[0]
        assert row.actor == "user:alice"
        assert (
            row.reason
            == f"change request {request.id}, approved by user:bob, applied by user:bob: ramp"
        )
        assert row.request_id == "req-1"
        assert row.after["rollout"] == 50

    def test_approve__author__refused_unless_allowed(
        self, gated: ApprovalService, admin: Principal, flags: SqlFlagStore
    ) -> None:
        """Self-approval is refused; with allow_self_approval it counts."""
        request = submit(gated, ALICE, StateChange(rollout=50)).request
        assert request is not None
        with pytest.raises(SelfApprovalError):
            gated.approve(ALICE, request.id)
        gated.set_policy(admin, ENV, 1, True)
        assert gated.approve(ALICE, request.id).status is RequestStatus.APPLIED

    def test_approve__second_token_of_same_person__refused(
        self, gated: ApprovalService, admin: Principal, flags: SqlFlagStore
    ) -> None:
        """Two tokens of one user are one person: the second approval is refused."""

        @dataclass(frozen=True, slots=True)
        class UserToken(Principal):
            user: str | None = None

        gated.set_policy(admin, ENV, 2)
        request = submit(gated, ALICE, StateChange(rollout=50)).request
        assert request is not None
        first = UserToken(token_id="tok-1", name="bob-laptop", role=Role.EDITOR, user="bob")
        second = UserToken(token_id="tok-2", name="bob-ci", role=Role.EDITOR, user="bob")
        assert person_of(first) == person_of(second) == "user:bob"
        assert gated.approve(first, request.id).status is RequestStatus.PENDING
        with pytest.raises(ChangeRequestStateError):
            gated.approve(second, request.id)
        assert flags.get_state(FLAG, ENV).rollout == 10
        assert gated.approve(CAROL, request.id).status is RequestStatus.APPLIED

    def test_approve__tokens_without_user__each_its_own_person(
        self, gated: ApprovalService
    ) -> None:
        """A token without a user counts as its own person."""
        assert person_of(token("t1", Role.EDITOR)) == "token:t1"
        request = submit(gated, token("t1", Role.EDITOR), StateChange(rollout=50)).request
        assert request is not None
        assert gated.approve(token("t2", Role.EDITOR), request.id).status is RequestStatus.APPLIED

    def test_approve__reader_or_out_of_scope__forbidden_or_absent(
        self, gated: ApprovalService
    ) -> None:
        """Approving needs the change's right; an out-of-scope request reads as absent."""
        request = submit(gated, ALICE, StateChange(rollout=50)).request
        assert request is not None
        with pytest.raises(ForbiddenError):
            gated.approve(READER, request.id)
        with pytest.raises(ChangeRequestNotFoundError):
            gated.approve(token("stg", Role.EDITOR, ("staging",)), request.id)

    def test_approve__racing_same_person__one_row(
        self, gated: ApprovalService, admin: Principal, flags: SqlFlagStore
    ) -> None:
        """The database holds one approval per person and revision."""
        gated.set_policy(admin, ENV, 3)
        request = submit(gated, ALICE, StateChange(rollout=50)).request
        assert request is not None
        gated.approve(BOB, request.id)
        with pytest.raises(ChangeRequestStateError):
            gated.approve(BOB, request.id)
        with flags.engine.connect() as conn:
            rows = conn.execute(select(change_request_approvals)).all()
        assert [r.person for r in rows] == ["user:bob"]


class TestLeaks:
    def test_edit_after_approval__drops_it(
        self, gated: ApprovalService, admin: Principal, flags: SqlFlagStore
    ) -> None:
        """Editing a request (even an approved one) drops its approvals: pending again."""
        gated.set_policy(admin, ENV, 2)
        request = submit(gated, ALICE, StateChange(rollout=20)).request
        assert request is not None
        assert len(gated.approve(BOB, request.id).approvals) == 1
        edited = gated.edit(ALICE, request.id, StateChange(rollout=100))
        assert edited.status is RequestStatus.PENDING and edited.approvals == ()
        assert edited.revision == 2 and edited.after.rollout == 100
        assert gated.approve(CAROL, request.id).status is RequestStatus.PENDING
        assert flags.get_state(FLAG, ENV).rollout == 10
        assert gated.approve(BOB, request.id).status is RequestStatus.APPLIED
        assert flags.get_state(FLAG, ENV).rollout == 100

    def test_edit__approved_unapplied__pending_again(self, gated: ApprovalService) -> None:
        """An approved request not yet applied goes back to pending when edited."""
        request = submit(gated, ALICE, StateChange(rollout=20)).request
        assert request is not None
        assert gated.approve(BOB, request.id, apply=False).status is RequestStatus.APPROVED
        edited = gated.edit(ALICE, request.id, StateChange(rollout=90))
        assert edited.status is RequestStatus.PENDING and edited.approvals == ()
        with pytest.raises(ChangeRequestStateError):
            gated.apply(ALICE, request.id)

    def test_edit__not_the_author__forbidden(self, gated: ApprovalService) -> None:
        """Only the author edits a request."""
        request = submit(gated, ALICE, StateChange(rollout=20)).request
        assert request is not None
        with pytest.raises(ForbiddenError):
            gated.edit(BOB, request.id, StateChange(rollout=90))

    def test_stale_flag__cannot_apply(self, gated: ApprovalService, flags: SqlFlagStore) -> None:
        """A request whose flag moved since it was made is stale at apply and writes nothing."""
        request = submit(gated, ALICE, StateChange(rollout=50)).request
        assert request is not None
        assert gated.approve(BOB, request.id, apply=False).status is RequestStatus.APPROVED
        flags.update_state(FLAG, ENV, StateChange(rollout=5), actor="someone")
        with pytest.raises(StaleChangeRequestError):
            gated.apply(ALICE, request.id)
        assert gated.get_request(ALICE, request.id).status is RequestStatus.STALE
        assert flags.get_state(FLAG, ENV).rollout == 5

    def test_stale_flag__cannot_be_approved(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """Approving a request whose flag moved marks it stale instead."""
        request = submit(gated, ALICE, StateChange(rollout=50)).request
        assert request is not None
        flags.kill(FLAG, [ENV], reason="incident", actor="olga")
        with pytest.raises(StaleChangeRequestError):
            gated.approve(BOB, request.id)
        assert gated.get_request(BOB, request.id).status is RequestStatus.STALE
        assert flags.get_state(FLAG, ENV).rollout == 10


class TestDecisions:
    def test_reject_and_cancel__close_the_request(self, gated: ApprovalService) -> None:
        """Rejected and cancelled requests take no further step."""
        first = submit(gated, ALICE, StateChange(rollout=50)).request
        second = submit(gated, ALICE, StateChange(rollout=60)).request
        assert first is not None and second is not None
        assert gated.reject(BOB, first.id, reason="no").status is RequestStatus.REJECTED
        with pytest.raises(ForbiddenError):
            gated.cancel(BOB, second.id)
        assert gated.cancel(ALICE, second.id).status is RequestStatus.CANCELLED
        for request_id in (first.id, second.id):
            with pytest.raises(ChangeRequestStateError):
                gated.approve(CAROL, request_id)
        listed = gated.list_requests(ALICE, status=[RequestStatus.PENDING])
        assert listed == []

    def test_show__diff__lists_directions(self, gated: ApprovalService) -> None:
        """A request's JSON carries the diff with each field's direction."""
        request = submit(gated, ALICE, StateChange(rollout=50)).request
        assert request is not None
        body = gated.get_request(READER, request.id).to_dict()
        assert body["diff"] == [
            {"field": "rollout", "direction": "raises", "before": 10, "after": 50}
        ]
        assert body["status"] == "pending" and body["required_approvals"] == 1


class TestBreakGlass:
    def test_break_glass__admin__applies_and_opens_review_until_second_person(
        self, gated: ApprovalService, admin: Principal, flags: SqlFlagStore
    ) -> None:
        """Break-glass applies at once, is recorded as such, and its review item stays
        listed until a second person acknowledges it."""
        outcome = submit(gated, admin, StateChange(rollout=100), break_glass="outage fix")
        assert not outcome.pending and outcome.review is not None
        assert flags.get_state(FLAG, ENV).rollout == 100
        row = history(flags)[0]
        assert row.reason == "break-glass: outage fix" and row.token_id == "admin1"
        assert [i.id for i in gated.reviews(READER)] == [outcome.review.id]
        with pytest.raises(SelfApprovalError):
            gated.acknowledge(admin, outcome.review.id)
        assert gated.reviews(READER) != []
        acked = gated.acknowledge(BOB, outcome.review.id)
        assert acked.acknowledged_by == "user:bob" and not acked.open
        assert gated.reviews(READER) == []
        with pytest.raises(ChangeRequestStateError):
            gated.acknowledge(CAROL, outcome.review.id)

    def test_break_glass__non_admin__forbidden(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """Only an admin breaks glass."""
        with pytest.raises(ForbiddenError):
            submit(gated, ALICE, StateChange(rollout=100), break_glass="hurry")
        assert flags.get_state(FLAG, ENV).rollout == 10

    def test_break_glass__empty_reason__refused(
        self, gated: ApprovalService, admin: Principal
    ) -> None:
        """A reason is required."""
        with pytest.raises(ValidationError):
            submit(gated, admin, StateChange(rollout=100), break_glass="  ")

    def test_break_glass__database_cli__recorded_the_same_way(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """The database CLI's principal (an admin with no token) can break glass too."""
        outcome = submit(
            gated, Principal.break_glass("cli:root"), StateChange(rollout=70), break_glass="db"
        )
        assert outcome.review is not None and outcome.review.person == "cli:root"
        assert history(flags)[0].actor == "cli:root"


class TestConcurrency:
    def test_submit__expected_version_stale__conflict(self, gated: ApprovalService) -> None:
        """If-Match is honoured before judging."""
        with pytest.raises(VersionConflictError):
            submit(gated, ALICE, StateChange(rollout=5), expected_version=0)


def test_change_dict__round_trip() -> None:
    """A StateChange survives its stored JSON form."""
    change = StateChange(
        enabled=True,
        rollout=3,
        tenants_on=frozenset({"b", "a"}),
        tenants_off_add=frozenset({"z"}),
        split=(("x", 1000),),
        tenant_variants=(("t", "x"),),
    )
    assert change_from_dict(change_to_dict(change)) == change


class TestJudgedState:
    def test_submit__state_moves_after_judging__judged_again(
        self, gated: ApprovalService, flags: SqlFlagStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A change judged lowering against a state that then moved is judged again
        against the new one: rollout 10 -> 5 lowers, but after a concurrent move to 1
        the same change raises and waits."""
        read = flags.get_state
        moved: list[bool] = []

        def racing_read(key: str, env: str):  # type: ignore[no-untyped-def]
            state = read(key, env)
            if not moved:
                moved.append(True)
                flags.update_state(key, env, StateChange(rollout=1), actor="racer")
            return state

        monkeypatch.setattr(flags, "get_state", racing_read)
        outcome = submit(gated, ALICE, StateChange(rollout=5))
        assert outcome.pending and outcome.risk is Risk.RAISES
        assert read(FLAG, ENV).rollout == 1


class TestUnkillAcrossEnvironments:
    def test_submit_unkill__gated_and_ungated__split_per_environment(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """An unkill over several environments applies where ungated and waits, one
        request per environment, where gated."""
        flags.kill(FLAG, [ENV, "staging"], reason="incident", actor="olga")
        outcome = gated.submit_unkill(OPERATOR, FLAG, [ENV, "staging"], reason="fixed")
        assert not flags.get_state(FLAG, "staging").killed
        assert flags.get_state(FLAG, ENV).killed
        assert list(outcome.pending) == [ENV]
        request = gated.approve(BOB, outcome.pending[ENV])
        assert request.status is RequestStatus.APPLIED
        assert not flags.get_state(FLAG, ENV).killed

    def test_submit_unkill__not_killed_in_gated_env__nothing_held(
        self, gated: ApprovalService, flags: SqlFlagStore
    ) -> None:
        """Unkilling a flag that is not killed changes nothing and opens no request."""
        outcome = gated.submit_unkill(OPERATOR, FLAG, [ENV], reason="noop")
        assert outcome.pending == {} and gated.list_requests(OPERATOR) == []


def test_submit_state__set_state_command__held_with_its_reason(gated: ApprovalService) -> None:
    """AdminService's SetState command goes through the same gate, reason kept."""
    from api.service.commands import SetState

    outcome = gated.submit_state(ALICE, SetState(FLAG, ENV, StateChange(rollout=30), "ramp"))
    assert outcome.request is not None and outcome.request.reason == "ramp"
