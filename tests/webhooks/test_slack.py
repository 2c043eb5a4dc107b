"""api.webhooks.slack: Slack incoming-webhook messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.webhooks.events import event_from_history
from api.webhooks.slack import slack_message


def _event(**over: Any):  # type: ignore[no-untyped-def]
    row = {
        "id": 9,
        "at": datetime(2026, 1, 1, tzinfo=UTC),
        "actor": "bob",
        "action": "state.update",
        "flag": "search.new",
        "environment": "prod",
        "before": {"rollout": 10},
        "after": {"rollout": 50},
        "reason": "stage 2 <ok> & fine",
        "request_id": None,
        "token_id": "t",
        "token_name": "bob",
        "claimed_actor": None,
    }
    row.update(over)
    return event_from_history(row)


def test_slack_message__state_update__text_and_blocks() -> None:
    """Text names what, where, who and why; blocks carry the change; mrkdwn is escaped."""
    msg = slack_message(_event())
    assert "search.new" in msg["text"] and "bob" in msg["text"]
    assert "&lt;ok&gt; &amp;" in msg["text"]
    kinds = [b["type"] for b in msg["blocks"]]
    assert kinds[:2] == ["header", "section"]
    assert any("rollout: 10 → 50" in b.get("text", {}).get("text", "") for b in msg["blocks"])
    assert "actions" not in kinds
    assert ":rotating_light:" not in msg["text"]


def test_slack_message__kill_by_guard__stands_out_with_console_link() -> None:
    """A guard's kill gets a siren, KILLED, and a danger button to the console page."""
    event = _event(action="kill", claimed_actor="cache-guard", before={}, after={"killed": True})
    msg = slack_message(event, "https://flags.example.com/")
    assert msg["text"].startswith(":rotating_light: search.new KILLED in prod")
    header = msg["blocks"][0]["text"]["text"]
    assert "KILLED" in header
    actions = next(b for b in msg["blocks"] if b["type"] == "actions")
    button = actions["elements"][0]
    assert button["url"] == "https://flags.example.com/console/flags/search.new"
    assert button["style"] == "danger"


def test_slack_message__no_flag__no_link() -> None:
    """An event about no flag has no console link even with a base URL."""
    event = _event(action="environment.create", flag=None, before=None, after={"name": "prod"})
    msg = slack_message(event, "https://flags.example.com")
    assert all(b["type"] != "actions" for b in msg["blocks"])
