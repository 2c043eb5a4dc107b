"""``flagrail flags unused --since 30d``: flags no SDK evaluated for that long.

A plain function for Typer; the ``flags`` sub-app registers it with
``flags_app.command("unused")(unused.unused)``. It reads
``GET /admin/reports/unused?since=...`` (reader token, scoped to its environments).
"""

from __future__ import annotations

from typing import Any

import httpx
import typer

from api.cli.output import CliError, print_json, print_table
from flags.settings import Settings

__all__ = ["fetch_unused", "unused"]


def fetch_unused(url: str, token: str, since: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The report's JSON. Raises ``CliError`` for an error answer or an unreachable server."""
    try:
        response = httpx.get(
            f"{url.rstrip('/')}/admin/reports/unused",
            params={"since": since},
            headers={"Authorization": f"Bearer {token}", "User-Agent": "flagrail-cli"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the flagrail server at {url}: {exc}") from exc
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = error["message"]
        except (ValueError, KeyError, TypeError):
            message = f"server answered {response.status_code}"
        raise CliError(message, exit_code=2 if response.status_code == 422 else 1)
    data: dict[str, Any] = response.json()
    return data


def unused(
    since: str = typer.Option("30d", "--since", help="Not evaluated for this long (like 30d)."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
    url: str | None = typer.Option(None, "--url", envvar="FLAGRAIL_URL", help="Admin API URL."),
    token: str | None = typer.Option(None, "--token", envvar="FLAGRAIL_TOKEN", help="API token."),
) -> None:
    """List live flags that no SDK evaluated since --since (created before then)."""
    if not token:
        raise CliError("no API token: pass --token or set FLAGRAIL_TOKEN", exit_code=2)
    if not url:
        settings = Settings()
        url = f"http://{settings.host}:{settings.port}"
    report = fetch_unused(url, token, since)
    if as_json:
        print_json(report)
        return
    items = report.get("items", [])
    print_table(
        ["key", "kind", "owner", "last_evaluated_at"],
        [[i["key"], i["kind"], i["owner"], i["last_evaluated_at"] or "never"] for i in items],
    )
    typer.echo(f"{len(items)} flags not evaluated since {report.get('since')}", err=True)
