"""The kill-confirmation line that ``flagrail kill --wait`` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_confirmation"]

LAGGING_SHOWN = 3


def format_confirmation(result: Mapping[str, Any]) -> str:
    """One line from the ``confirmed``/``live``/``lagging``/``elapsed_ms`` of a kill answer.

    ``confirmed 4/4 SDK instances in 23 ms`` when every live instance applied it;
    ``NOT confirmed: 3/4 SDK instances after 2000 ms; lagging: web-1:4242 (checkout)
    at version 41 (token ci-deploy)`` otherwise (the token's name when the server
    names the instance's token, #14); a note when no instance is live. A result
    without these fields (an older server) gives a line saying so.
    """
    if "confirmed" not in result or "live" not in result:
        return "kill sent; this server does not report SDK confirmation"
    confirmed, live = int(result["confirmed"]), int(result["live"])
    elapsed = int(result.get("elapsed_ms") or 0)
    if live == 0:
        return "no live SDK instance to confirm the kill (0/0)"
    if confirmed >= live:
        return f"confirmed {confirmed}/{live} SDK instances in {elapsed} ms"
    lagging = list(result.get("lagging") or [])
    shown = []
    for item in lagging[:LAGGING_SHOWN]:
        app = f" ({item['app']})" if item.get("app") else ""
        token = f" (token {item['token_name']})" if item.get("token_name") else ""
        shown.append(
            f"{item.get('host', '?')}:{item.get('pid', '?')}{app} "
            f"at version {item.get('applied_version', '?')}{token}"
        )
    more = f" and {len(lagging) - LAGGING_SHOWN} more" if len(lagging) > LAGGING_SHOWN else ""
    return (
        f"NOT confirmed: {confirmed}/{live} SDK instances after {elapsed} ms; "
        f"lagging: {', '.join(shown)}{more}"
    )
