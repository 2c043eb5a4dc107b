"""``flagrail token create|list|revoke``: works directly on the database (the bootstrap path),
through ``DatabaseAdmin`` and so the same ``AdminService`` as ``/admin/tokens``."""

from __future__ import annotations

import typer

from api.cli.database import DatabaseAdmin
from api.cli.database_option import DatabaseUrl, database_url
from api.cli.output import print_json, print_table

app = typer.Typer(help="API tokens (directly on the database).", no_args_is_help=True)


def _admin(url: str | None) -> DatabaseAdmin:
    return DatabaseAdmin(database_url(url))


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="Token name: the actor in the history."),
    role: str = typer.Option(
        ..., "--role", help="client, reader, operator, editor, admin, or guard (kill only)."
    ),
    env: list[str] = typer.Option(None, "--env", help="Scope to this environment (repeat)."),
    flag_patterns: list[str] = typer.Option(
        None,
        "--flags",
        help="Limit to flag keys matching this fnmatch pattern, e.g. 'auth.cache.*' (repeat).",
    ),
    user: str | None = typer.Option(
        None,
        "--user",
        help="Issue it to this console user: it stops working while they are disabled.",
    ),
    database_url_opt: str | None = DatabaseUrl,
) -> None:
    """Create a token and print only its value, so TOKEN=$(flagrail token create ...) works."""
    with _admin(database_url_opt) as admin:
        created = admin.create_token(name, role, env or None, flag_patterns or None, user)
    typer.echo(created["token"])


@app.command("list")
def list_tokens(
    as_json: bool = typer.Option(False, "--json"), database_url_opt: str | None = DatabaseUrl
) -> None:
    with _admin(database_url_opt) as admin:
        items = admin.list_tokens()["items"]
    if as_json:
        print_json({"items": items})
        return
    print_table(
        ["id", "name", "role", "environments", "flags", "user", "revoked", "created_at"],
        [
            [
                t["id"],
                t["name"],
                t["role"],
                ",".join(t["environments"] or ["*"]),
                ",".join(t.get("flags") or ["*"]),
                t.get("user") or "",
                "yes" if t["revoked"] else "",
                t["created_at"],
            ]
            for t in items
        ],
    )


@app.command("revoke")
def revoke(token_id: str, database_url_opt: str | None = DatabaseUrl) -> None:
    with _admin(database_url_opt) as admin:
        info = admin.revoke_token(token_id)
    typer.echo(f"revoked {info['id']} ({info['name']})", err=True)
