"""Slack incoming-webhook messages for webhook events: pure.

``slack_message`` returns a body Slack's incoming webhooks accept: ``text`` (the
notification and fallback line) plus ``blocks``: a header for what happened, a
section with where (flag, environment), who (actor, and the guard or plan behind
it) and why (the reason), the before/after of a state change, and a link button to
``{base_url}/console/flags/{key}`` when a public base URL is set and the event is
about a flag. Kills and guard actions stand out: a siren in the text and header and
a ``danger`` button. Text is escaped as Slack's mrkdwn asks (``&``, ``<``, ``>``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from api.webhooks.events import Via, WebhookEvent

__all__ = ["slack_message"]

# Slack's limits: a section text is at most 3000 characters, a header 150.
_SECTION_MAX = 3000
_HEADER_MAX = 150


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _headline(event: WebhookEvent) -> str:
    what = event.type.replace(".", " ").replace("_", " ")
    subject = event.flag or event.environment or ""
    where = f" in {event.environment}" if event.flag and event.environment else ""
    head = f"{subject} {what}{where}".strip() if subject else what
    if event.type == "state.killed":
        head = f"{event.flag or 'a flag'} KILLED{where}"
    if event.stands_out:
        return f":rotating_light: {head}"
    return head


def _who(event: WebhookEvent) -> str:
    who = event.actor
    if event.via is Via.GUARD:
        token = f" (guard token {event.token_name})" if event.token_name else " (guard)"
        return f"{who}{token}"
    if event.via is Via.PLAN:
        return f"{who} (rollout plan)"
    return who


def _state_line(event: WebhookEvent) -> str | None:
    if not isinstance(event.before, dict) and not isinstance(event.after, dict):
        return None
    before = event.before if isinstance(event.before, dict) else {}
    after = event.after if isinstance(event.after, dict) else {}
    changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if not changed:
        return None
    parts = [
        f"{k}: {json.dumps(before.get(k), default=str)} → {json.dumps(after.get(k), default=str)}"
        for k in changed[:8]
    ]
    if len(changed) > 8:
        parts.append(f"… and {len(changed) - 8} more")
    return "\n".join(parts)


def slack_message(event: WebhookEvent, base_url: str | None = None) -> dict[str, Any]:
    """A Slack incoming-webhook body for ``event``. ``base_url`` (the server's public
    URL, no trailing slash needed) adds a link to the flag's console page."""
    headline = _headline(event)
    fields = []
    if event.flag:
        fields.append({"type": "mrkdwn", "text": f"*Flag*\n`{_escape(event.flag)}`"})
    if event.environment:
        fields.append({"type": "mrkdwn", "text": f"*Environment*\n{_escape(event.environment)}"})
    fields.append({"type": "mrkdwn", "text": f"*By*\n{_escape(_who(event))}"})
    fields.append({"type": "mrkdwn", "text": f"*Why*\n{_escape(event.reason or '(no reason)')}"})
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(headline, _HEADER_MAX)}},
        {"type": "section", "fields": fields},
    ]
    change = _state_line(event)
    if change:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _clip(f"```{_escape(change)}```", _SECTION_MAX)},
            }
        )
    link = None
    if base_url and event.flag:
        link = f"{base_url.rstrip('/')}/console/flags/{quote(event.flag, safe='')}"
        button: dict[str, Any] = {
            "type": "button",
            "text": {"type": "plain_text", "text": "Open in console"},
            "url": link,
        }
        if event.stands_out:
            button["style"] = "danger"
        blocks.append({"type": "actions", "elements": [button]})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"flagrail {event.type} · sequence {event.sequence} · "
                    f"{event.at.isoformat()}",
                }
            ],
        }
    )
    text = _escape(headline) + f" by {_escape(_who(event))}"
    if event.reason:
        text += f": {_escape(event.reason)}"
    if link:
        text += f" <{link}|open>"
    return {"text": _clip(text, _SECTION_MAX), "blocks": blocks}
