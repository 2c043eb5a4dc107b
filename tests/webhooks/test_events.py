"""api.webhooks.events: one event per history row, and who receives it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from api.webhooks.events import Via, event_from_history, event_type, receives, standard_payload
from api.webhooks.model import Subscription, parse_subscription

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _row(**over: Any) -> dict[str, Any]:
    row = {
        "id": 42,
        "at": AT,
        "actor": "alice",
        "action": "kill",
        "flag": "checkout.v2",
        "environment": "prod",
        "before": {"killed": False},
        "after": {"killed": True},
        "reason": "errors up",
        "request_id": "r1",
        "token_id": "t1",
        "token_name": "alice-cli",
        "claimed_actor": None,
    }
    row.update(over)
    return row


def _sub(scope: tuple[str, ...] | None = None, admin: bool = True, **body: Any) -> Subscription:
    spec = parse_subscription({"url": "https://x.example", "events": ["*"], **body})
    return Subscription("wh_1", spec, False, AT, "admin", scope=scope, admin=admin)


@pytest.mark.parametrize(
    ("action", "kind", "expected"),
    [
        ("flag.create", None, "flag.created"),
        ("flag.update", None, "flag.updated"),
        ("flag.archive", None, "flag.archived"),
        ("state.update", None, "state.updated"),
        ("kill", None, "state.killed"),
        ("unkill", None, "state.unkilled"),
        ("plan.create", "plan", "plan.created"),
        ("plan.stage", "plan", "plan.advanced"),
        ("plan.rollback", "plan", "plan.rolled_back"),
        ("plan.complete", "plan", "plan.completed"),
        ("plan.stage", "schedule", "schedule.applied"),
        ("plan.create", "schedule", "schedule.created"),
        ("token.create", None, "token.created"),
        ("token.revoke", None, "token.revoked"),
        ("something.new", None, "something.new"),
    ],
)
def test_event_type__history_action__mapped(action: str, kind: str | None, expected: str) -> None:
    """Each history action has its event type."""
    assert event_type(action, kind) == expected


def test_event_from_history__kill_row__sequence_before_after_actor() -> None:
    """The row's id is the sequence; before/after, actor and reason are kept."""
    event = event_from_history(_row())
    assert event.sequence == 42
    assert event.id == "evt_42"
    assert event.type == "state.killed"
    assert (event.before, event.after, event.actor, event.reason) == (
        {"killed": False},
        {"killed": True},
        "alice",
        "errors up",
    )
    assert event.via is Via.PERSON
    assert event.stands_out


@pytest.mark.parametrize(
    ("over", "role", "via"),
    [
        ({"claimed_actor": "cache-guard"}, None, Via.GUARD),
        ({}, "guard", Via.GUARD),
        ({"actor": "plan:3", "token_id": None}, None, Via.PLAN),
        ({"actor": "cli:root", "token_id": None}, None, Via.PERSON),
        ({"actor": "system", "token_id": None}, None, Via.SYSTEM),
    ],
)
def test_event_from_history__who__via(over: dict[str, Any], role: str | None, via: Via) -> None:
    """A guard token or claimed actor is a guard; plan:<id> a plan."""
    assert event_from_history(_row(**over), token_role=role).via is via


def test_receives__creator_scope__other_environment_never() -> None:
    """No subscription filter widens its creator's scope."""
    event = event_from_history(_row(environment="prod"))
    assert not receives(_sub(scope=("staging",)), event)
    assert not receives(_sub(scope=("staging",), environments=["prod"]), event)
    assert receives(_sub(scope=("prod",)), event)


def test_receives__token_events__only_unscoped_admins() -> None:
    """Token and user changes reach only subscriptions an unscoped admin made."""
    event = event_from_history(_row(action="token.create", flag=None, environment=None))
    assert receives(_sub(), event)
    assert not receives(_sub(admin=False), event)
    assert not receives(_sub(scope=("prod",)), event)


def test_receives__filters__events_environments_flags() -> None:
    """Event patterns, environments and flag patterns all have to match."""
    event = event_from_history(_row())
    assert receives(_sub(events=["state.killed"]), event)
    assert not receives(_sub(events=["flag.*"]), event)
    assert not receives(_sub(environments=["staging"]), event)
    assert receives(_sub(flags=["checkout.*"]), event)
    assert not receives(_sub(flags=["search.*"]), event)
    flagless = event_from_history(_row(action="environment.create", flag=None))
    assert not receives(_sub(flags=["checkout.*"]), flagless)


def test_standard_payload__shape__type_timestamp_data() -> None:
    """The body has the Standard Webhooks shape plus id and sequence."""
    payload = standard_payload(
        event_from_history(_row(claimed_actor="guard-bot"), token_role="guard")
    )
    assert payload["id"] == "evt_42"
    assert payload["sequence"] == 42
    assert payload["type"] == "state.killed"
    assert payload["timestamp"] == AT.isoformat()
    assert payload["data"]["via"] == "guard"
    assert payload["data"]["actor"]["claimed"] == "guard-bot"
    assert payload["data"]["env_version"] is None
    assert standard_payload(event_from_history(_row(env_version=17)))["data"]["env_version"] == 17
