"""Plans and schedules in a gated environment: one change request for the whole plan,
created through the PlanWriter inside the apply's transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import Connection

from api.service.approvals import ApprovalService
from flags.errors import FlagrailError, ForbiddenError
from flags.history import Actor, HistoryQuery
from flags.model import FlagChanged, Role
from flags.store import history as history_log
from flags.store.change_requests import ChangeKind, ChangeRequestStore, RequestStatus
from flags.store.sql import SqlFlagStore
from tests.approvals.people import ENV, FLAG, user

BODY = {"environment": ENV, "stages": [{"rollout": 25, "hold": "1h"}, {"rollout": 100}]}
ALICE = user("alice", Role.EDITOR)
BOB = user("bob", Role.EDITOR)


class RecordingWriter:
    """A PlanWriter double: records a plan.create history row on the caller's connection."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.created: list[tuple[str, ChangeKind, dict[str, Any]]] = []

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
        history_log.record_change(
            conn, actor=actor, action="plan.create", flag=key, environment=ENV, reason=reason
        )
        if self.fail:
            raise FlagrailError("plan store refused")
        self.created.append((key, kind, dict(body)))
        return []


@pytest.fixture
def writer(requests: ChangeRequestStore) -> RecordingWriter:
    requests.plans = RecordingWriter()
    return requests.plans


def plan_rows(flags: SqlFlagStore) -> list[Any]:
    return flags.list_history(HistoryQuery(action="plan.create", limit=50)).items


def test_submit_plan__ungated__left_to_the_caller(
    service: ApprovalService, writer: RecordingWriter
) -> None:
    """Without a policy the gate returns None and creates nothing."""
    assert service.submit_plan(ALICE, ChangeKind.PLAN, FLAG, ENV, BODY) is None
    assert writer.created == []


def test_submit_plan__gated__one_request_until_approved(
    gated: ApprovalService, writer: RecordingWriter, flags: SqlFlagStore
) -> None:
    """A plan in a gated environment is one request; the approval creates it, its
    history row naming the request."""
    outcome = gated.submit_plan(ALICE, ChangeKind.PLAN, FLAG, ENV, BODY, reason="ramp")
    assert outcome is not None and outcome.request is not None
    assert outcome.request.to_dict()["plan"] == BODY and outcome.request.to_dict()["diff"] == []
    assert writer.created == [] and plan_rows(flags) == []
    done = gated.approve(BOB, outcome.request.id)
    assert done.status is RequestStatus.APPLIED
    assert writer.created == [(FLAG, ChangeKind.PLAN, BODY)]
    (row,) = plan_rows(flags)
    assert row.actor == "user:alice"
    assert row.reason.startswith(f"change request {outcome.request.id}, approved by user:bob")


def test_apply_plan__writer_fails__request_stays_approved(
    gated: ApprovalService, requests: ChangeRequestStore, flags: SqlFlagStore
) -> None:
    """The plan, its history row and the applied status commit together or not at all."""
    requests.plans = RecordingWriter(fail=True)
    outcome = gated.submit_plan(ALICE, ChangeKind.SCHEDULE, FLAG, ENV, BODY)
    assert outcome is not None and outcome.request is not None
    gated.approve(BOB, outcome.request.id, apply=False)
    with pytest.raises(FlagrailError):
        gated.apply(BOB, outcome.request.id)
    assert gated.get_request(BOB, outcome.request.id).status is RequestStatus.APPROVED
    assert plan_rows(flags) == []


def test_submit_plan__break_glass__created_with_review(
    gated: ApprovalService, writer: RecordingWriter, admin: Any, flags: SqlFlagStore
) -> None:
    """An admin breaks glass for a plan: created at once, review item open."""
    outcome = gated.submit_plan(admin, ChangeKind.PLAN, FLAG, ENV, BODY, break_glass="launch")
    assert outcome is not None and outcome.review is not None and outcome.review.open
    assert writer.created == [(FLAG, ChangeKind.PLAN, BODY)]
    assert plan_rows(flags)[0].reason == "break-glass: launch"


def test_submit_plan__reader__forbidden(gated: ApprovalService) -> None:
    """Proposing a plan needs the plan right."""
    with pytest.raises(ForbiddenError):
        gated.submit_plan(user("rita", Role.READER), ChangeKind.PLAN, FLAG, ENV, BODY)
