"""``flagrail webhook create|list|show|update|delete|pause|resume|deliveries|redeliver``.

Through the admin API (``--url``/``--token``, an admin token), or with
``--database-url`` directly on the database through the same ``WebhookService``
as ``/admin/webhooks`` (break-glass, as ``cli:<os user>``). Both paths print the
API's JSON with ``--json``. ``create`` prints the signing secret once, on stdout
(so ``SECRET=$(flagrail webhook create ... --secret-only)`` works).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import typer

from api.cli.backend import BREAK_GLASS_HINT, connect
from api.cli.flags import AsJson, DirectDatabase, ServerUrl, Token
from api.cli.output import CliError, print_json, print_table
from flags.errors import ServerUnavailableError

app = typer.Typer(help="Webhook subscriptions and their deliveries.", no_args_is_help=True)


class WebhookApi(Protocol):
    """What the commands call: one method per route, answering the route's JSON."""

    def call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...

    def close(self) -> None: ...


class _Http:
    def __init__(self, url: str | None, token: str | None) -> None:
        self.client = connect(url, token)

    def call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return self.client.request(method, "/admin/webhooks" + path, json=body, params=params)

    def close(self) -> None:
        self.client.close()


class _Database:
    """The routes' work done in-process on the database (no HTTP)."""

    def __init__(self, url: str) -> None:
        from api.service.principal import Principal
        from api.webhooks.service import WebhookService
        from api.webhooks.store import WebhookStore
        from flags.store.schema import check_schema
        from flags.store.sql import SqlFlagStore, cli_actor

        self.store = SqlFlagStore(url)
        check_schema(self.store.engine)
        self.principal = Principal.break_glass(cli_actor())
        self.service = WebhookService(WebhookStore(self.store.engine))

    def call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        s, p = self.service, self.principal
        parts = [x for x in path.split("/") if x]
        if method == "POST" and not parts:
            sub, secret = s.create(p, body)
            return {**sub.to_dict(), "secret": secret}
        if method == "GET" and not parts:
            return {"items": [x.to_dict() for x in s.list(p)]}
        sub_id = parts[0]
        rest = parts[1:]
        if method == "GET" and not rest:
            return s.get(p, sub_id).to_dict()
        if method == "PATCH":
            return s.update(p, sub_id, body).to_dict()
        if method == "DELETE":
            s.delete(p, sub_id)
            return {"id": sub_id, "deleted": True}
        if method == "POST" and rest in (["pause"], ["resume"]):
            return s.set_paused(p, sub_id, rest == ["pause"]).to_dict()
        if method == "GET" and rest == ["deliveries"]:
            items = s.deliveries(p, sub_id, **(params or {}))
            return {"items": [d.to_dict() for d in items]}
        if method == "POST" and len(rest) == 3 and rest[0] == "deliveries":
            s.redeliver(p, sub_id, int(rest[1]))
            return {"id": int(rest[1]), "status": "pending"}
        raise CliError(f"no such webhook operation: {method} {path}")  # pragma: no cover

    def close(self) -> None:
        self.store.close()


def _run(
    url: str | None,
    token: str | None,
    database_url: str | None,
    call: Callable[[WebhookApi], dict[str, Any]],
) -> dict[str, Any]:
    api: WebhookApi = _Database(database_url) if database_url else _Http(url, token)
    try:
        return call(api)
    except ServerUnavailableError as exc:
        raise CliError(f"{exc}; {BREAK_GLASS_HINT}") from exc
    finally:
        api.close()


def _render_one(data: dict[str, Any]) -> None:
    for key in ("id", "url", "format", "events", "environments", "flags", "paused", "created_by"):
        value = data.get(key)
        if isinstance(value, list):
            value = ",".join(value)
        typer.echo(f"{key:13} {'*' if value is None else value}")


def _body(
    url: str | None,
    events: list[str] | None,
    envs: list[str] | None,
    flags: list[str] | None,
    fmt: str | None,
    description: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if url is not None:
        body["url"] = url
    if events:
        body["events"] = events
    if envs:
        body["environments"] = envs
    if flags:
        body["flags"] = flags
    if fmt is not None:
        body["format"] = fmt
    if description is not None:
        body["description"] = description
    return body


Events = typer.Option(
    None, "--event", help="Event pattern, e.g. 'flag.*', 'state.killed' (repeat)."
)
Envs = typer.Option(None, "--env", help="Only this environment (repeat).")
Flags = typer.Option(None, "--flag", help="Only flags matching this pattern (repeat).")
Format = typer.Option(None, "--format", help="standard (signed JSON) or slack.")
Description = typer.Option(None, "--description", help="A note for people.")


@app.command("create")
def create(
    target: str = typer.Argument(..., help="The receiver's http(s) URL."),
    events: list[str] = Events,
    envs: list[str] = Envs,
    flags: list[str] = Flags,
    fmt: str | None = Format,
    description: str | None = Description,
    secret_only: bool = typer.Option(False, "--secret-only", help="Print only the secret."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Subscribe TARGET; the signing secret is printed this once."""
    body = _body(target, events or ["*"], envs, flags, fmt, description)
    data = _run(url, token, database_url, lambda a: a.call("POST", "", body))
    if as_json:
        print_json(data)
    elif secret_only:
        typer.echo(data["secret"])
    else:
        _render_one(data)
        typer.echo(f"{'secret':13} {data['secret']}  (shown once: store it now)")


@app.command("list")
def list_webhooks(
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    data = _run(url, token, database_url, lambda a: a.call("GET", ""))
    if as_json:
        print_json(data)
        return
    print_table(
        ["id", "url", "format", "events", "environments", "paused"],
        [
            [
                w["id"],
                w["url"],
                w["format"],
                ",".join(w["events"]),
                ",".join(w["environments"] or ["*"]),
                "yes" if w["paused"] else "",
            ]
            for w in data["items"]
        ],
    )


@app.command("show")
def show(
    webhook_id: str,
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    data = _run(url, token, database_url, lambda a: a.call("GET", f"/{webhook_id}"))
    print_json(data) if as_json else _render_one(data)


@app.command("update")
def update_webhook(
    webhook_id: str,
    target: str | None = typer.Option(None, "--target", help="A new receiver URL."),
    events: list[str] = Events,
    envs: list[str] = Envs,
    flags: list[str] = Flags,
    fmt: str | None = Format,
    description: str | None = Description,
    all_envs: bool = typer.Option(False, "--all-envs", help="Clear the environment filter."),
    all_flags: bool = typer.Option(False, "--all-flags", help="Clear the flag filter."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Change what the options name; the rest stays."""
    body = _body(target, events, envs, flags, fmt, description)
    if all_envs:
        body["environments"] = None
    if all_flags:
        body["flags"] = None
    if not body:
        raise CliError("nothing to change: name at least one option", exit_code=2)
    data = _run(url, token, database_url, lambda a: a.call("PATCH", f"/{webhook_id}", body))
    print_json(data) if as_json else _render_one(data)


@app.command("delete")
def delete_webhook(
    webhook_id: str,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    _run(url, token, database_url, lambda a: a.call("DELETE", f"/{webhook_id}"))
    typer.echo(f"deleted {webhook_id}", err=True)


@app.command("pause")
def pause(
    webhook_id: str,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Hold deliveries (they keep collecting, and go out in order on resume)."""
    _run(url, token, database_url, lambda a: a.call("POST", f"/{webhook_id}/pause"))
    typer.echo(f"paused {webhook_id}", err=True)


@app.command("resume")
def resume(
    webhook_id: str,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    _run(url, token, database_url, lambda a: a.call("POST", f"/{webhook_id}/resume"))
    typer.echo(f"resumed {webhook_id}", err=True)


@app.command("deliveries")
def deliveries(
    webhook_id: str,
    status: str | None = typer.Option(None, "--status", help="pending, delivered or failed."),
    limit: int = typer.Option(50, "--limit", min=1, max=500),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """The delivery log, newest first."""
    params = {"status": status, "limit": limit}
    if database_url:
        params = {k: v for k, v in params.items() if v is not None}
    data = _run(
        url, token, database_url, lambda a: a.call("GET", f"/{webhook_id}/deliveries", None, params)
    )
    if as_json:
        print_json(data)
        return
    print_table(
        ["id", "sequence", "event", "status", "attempts", "code", "last_error"],
        [
            [
                d["id"],
                d["sequence"],
                d["event_type"],
                d["status"],
                d["attempts"],
                d["response_code"],
                (d["last_error"] or "")[:60],
            ]
            for d in data["items"]
        ],
    )


@app.command("redeliver")
def redeliver(
    webhook_id: str,
    delivery_id: int,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Send a delivery again (same id and body)."""
    path = f"/{webhook_id}/deliveries/{delivery_id}/redeliver"
    _run(url, token, database_url, lambda a: a.call("POST", path))
    typer.echo(f"redelivery of {delivery_id} queued", err=True)
