"""ChangeRequestStore on SQLite and PostgreSQL: apply is one transaction with its history
row and status, racing approvers and appliers leave one outcome."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from flags.errors import FlagrailError
from flags.history import Actor, HistoryQuery
from flags.model import StateChange
from flags.store import history as history_log
from flags.store.change_requests import (
    ChangeKind,
    ChangeRequestStateError,
    ChangeRequestStore,
    Policy,
    RequestStatus,
)
from flags.store.sql import SqlFlagStore
from tests.approvals.people import ENV, FLAG

ALICE = Actor("user:alice")


def approved(requests: ChangeRequestStore) -> int:
    """A request for rollout 50, approved by bob (one approval required)."""
    requests.set_policy(Policy(ENV, 1), actor="admin")
    request = requests.create(
        ChangeKind.STATE, FLAG, ENV, StateChange(rollout=50), author=ALICE,
        person="user:alice", reason="ramp",
    )  # fmt: skip
    assert requests.approve(request.id, approver=Actor("user:bob"), person="user:bob").status is (
        RequestStatus.APPROVED
    )
    return request.id


def test_apply__history_write_fails__nothing_written(
    requests: ChangeRequestStore, flags: SqlFlagStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the history row cannot be written, neither the state nor the status changes."""
    request_id = approved(requests)
    rows_before = len(flags.list_history(HistoryQuery(flag=FLAG, limit=500)).items)

    def broken(conn: Any, rows: Any) -> None:
        raise FlagrailError("history unavailable")

    monkeypatch.setattr(history_log, "record_changes", broken)
    with pytest.raises(FlagrailError):
        requests.apply(request_id, actor="user:bob")
    monkeypatch.undo()
    assert flags.get_state(FLAG, ENV).rollout == 10
    assert requests.get(request_id).status is RequestStatus.APPROVED
    assert len(flags.list_history(HistoryQuery(flag=FLAG, limit=500)).items) == rows_before
    applied, events = requests.apply(request_id, actor="user:bob")
    assert applied.status is RequestStatus.APPLIED
    assert [e.state.rollout for e in events if e.state is not None] == [50]


def test_apply__published__after_commit(requests: ChangeRequestStore, flags: SqlFlagStore) -> None:
    """Listeners (SDK fan-out) hear the applied change once, with the new state."""
    heard: list[Any] = []
    flags.listeners.append(heard.extend)
    request_id = approved(requests)
    requests.apply(request_id, actor="user:bob")
    assert [(e.flag, e.state.rollout) for e in heard] == [(FLAG, 50)]


def test_apply__racing_appliers__one_applies(
    requests: ChangeRequestStore, flags: SqlFlagStore
) -> None:
    """Two appliers at once: one applies, the other hears the request is applied."""
    request_id = approved(requests)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        try:
            requests.apply(request_id, actor="user:bob")
            outcomes.append("applied")
        except ChangeRequestStateError:
            outcomes.append("refused")

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["applied", "refused"]
    rows = flags.list_history(HistoryQuery(flag=FLAG, environment=ENV, limit=500)).items
    assert sum(1 for r in rows if r.reason and r.reason.startswith("change request")) == 1
    assert flags.get_state(FLAG, ENV).version == 2


def test_policy__raised_later__applies_to_open_requests(requests: ChangeRequestStore) -> None:
    """Raising required_approvals after a request was made raises its bar too."""
    requests.set_policy(Policy(ENV, 1), actor="admin")
    request = requests.create(
        ChangeKind.STATE, FLAG, ENV, StateChange(rollout=50), author=ALICE,
        person="user:alice", reason=None,
    )  # fmt: skip
    requests.set_policy(Policy(ENV, 2), actor="admin")
    bob = requests.approve(request.id, approver=Actor("user:bob"), person="user:bob")
    assert bob.status is RequestStatus.PENDING
    carol = requests.approve(request.id, approver=Actor("user:carol"), person="user:carol")
    assert carol.status is RequestStatus.APPROVED
