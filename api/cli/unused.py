"""``flagrail flags unused --since 30d``: flags no SDK evaluated for that long.

A plain function for Typer; the ``flags`` sub-app registers it with
``flags_app.command("unused")(unused.unused)``. It reads
``GET /admin/reports/unused?since=...`` through ``AdminClient.unused`` (reader token,
scoped to its environments).
"""

from __future__ import annotations

import typer

from api.cli.backend import connect
from api.cli.output import print_json, print_table

__all__ = ["unused"]


def unused(
    since: str = typer.Option("30d", "--since", help="Not evaluated for this long (like 30d)."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
    url: str | None = typer.Option(None, "--url", envvar="FLAGRAIL_URL", help="Admin API URL."),
    token: str | None = typer.Option(None, "--token", envvar="FLAGRAIL_TOKEN", help="API token."),
) -> None:
    """List live flags that no SDK evaluated since --since (created before then)."""
    with connect(url, token) as client:
        report = client.unused(since)
    if as_json:
        print_json(report)
        return
    items = report.get("items", [])
    print_table(
        ["key", "kind", "owner", "last_evaluated_at"],
        [[i["key"], i["kind"], i["owner"], i["last_evaluated_at"] or "never"] for i in items],
    )
    typer.echo(f"{len(items)} flags not evaluated since {report.get('since')}", err=True)
