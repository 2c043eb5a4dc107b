"""``flagrail cr list|show|approve|reject|cancel|apply|reviews|ack``: change requests and
break-glass review items; ``flagrail env policy ENV --approvals N``: an environment's
approval policy (``register_policy`` adds it to ``flagrail env``).

Through the admin API (``--url``/``--token``), or with ``--database-url`` directly on
the database through the same ``ApprovalService`` as ``/admin/change-requests``
(as ``cli:<os user>``, an admin with no token: a person of its own, so it cannot
approve a request it made). ``--json`` prints the API's JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import typer

from api.cli.backend import BREAK_GLASS_HINT, connect
from api.cli.flags import AsJson, DirectDatabase, ServerUrl, Token
from api.cli.output import CliError, print_json, print_table
from flags.errors import ServerUnavailableError

app = typer.Typer(help="Change requests (approvals) and break-glass reviews.", no_args_is_help=True)


class ApprovalApi(Protocol):
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
        return self.client.request(method, "/admin" + path, json=body, params=params)

    def close(self) -> None:
        self.client.close()


class _Database:
    """The routes' work done in-process on the database (no HTTP)."""

    def __init__(self, url: str) -> None:
        from api.service.approvals import ApprovalService
        from api.service.principal import Principal
        from flags.store.change_requests import ChangeRequestStore
        from flags.store.schema import check_schema
        from flags.store.sql import SqlFlagStore, cli_actor

        self.store = SqlFlagStore(url)
        check_schema(self.store.engine)
        requests = ChangeRequestStore(self.store)
        self.principal = Principal.break_glass(cli_actor())
        self.service = ApprovalService(self.store, requests)

    def call(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        from flags.store.change_requests import RequestStatus

        s, p = self.service, self.principal
        parts = [x for x in path.split("/") if x]
        reason = (body or {}).get("reason")
        if parts == ["change-requests"]:
            params = params or {}
            status = [RequestStatus(x) for x in params.get("status") or []] or None
            items = s.list_requests(
                p, status=status, environment=params.get("environment"), flag=params.get("flag")
            )
            return {"items": [r.to_dict() for r in items]}
        if parts[0] == "environments" and parts[2:] == ["policy"]:
            if method == "GET":
                return s.policy(p, parts[1]).to_dict()
            body = body or {}
            policy = s.set_policy(
                p,
                parts[1],
                body.get("required_approvals"),
                body.get("allow_self_approval", False),
            )
            return policy.to_dict()
        if parts == ["reviews"]:
            open_only = not (params or {}).get("all")
            return {"items": [i.to_dict() for i in s.reviews(p, open_only=open_only)]}
        if parts[0] == "reviews" and parts[2:] == ["acknowledge"]:
            return s.acknowledge(p, int(parts[1])).to_dict()
        number, rest = int(parts[1]), parts[2:]
        if not rest:
            return s.get_request(p, number).to_dict()
        operations: dict[str, Callable[[], Any]] = {
            "approve": lambda: s.approve(p, number),
            "reject": lambda: s.reject(p, number, reason=reason),
            "cancel": lambda: s.cancel(p, number, reason=reason),
            "apply": lambda: s.apply(p, number),
        }
        if rest[0] not in operations:  # pragma: no cover - the commands send only these
            raise CliError(f"no such change-request operation: {method} {path}")
        return operations[rest[0]]().to_dict()  # type: ignore[no-any-return]

    def close(self) -> None:
        self.store.close()


def _run(
    url: str | None,
    token: str | None,
    database_url: str | None,
    call: Callable[[ApprovalApi], dict[str, Any]],
) -> dict[str, Any]:
    api: ApprovalApi = _Database(database_url) if database_url else _Http(url, token)
    try:
        return call(api)
    except ServerUnavailableError as exc:
        raise CliError(f"{exc}; {BREAK_GLASS_HINT}") from exc
    finally:
        api.close()


def _diff_line(move: dict[str, Any]) -> str:
    return f"  {move['direction']:7} {move['field']}: {move['before']} -> {move['after']}"


def _render(data: dict[str, Any]) -> None:
    typer.echo(f"change request {data['id']}: {data['status']}")
    typer.echo(f"  {data['kind']} of {data['flag']} in {data['environment']}")
    typer.echo(f"  by {data['author']}" + (f": {data['reason']}" if data.get("reason") else ""))
    approvers = ", ".join(a["person"] for a in data["approvals"]) or "none"
    typer.echo(f"  approvals {len(data['approvals'])}/{data['required_approvals']}: {approvers}")
    for move in data["diff"]:
        typer.echo(_diff_line(move))
    if data.get("plan") is not None:
        typer.echo(f"  plan: {data['plan']}")


Reason = typer.Option(None, "--reason", help="Why (recorded).")
Number = typer.Argument(..., min=1, help="The change request's number.")


@app.command("list")
def list_requests(
    status: list[str] = typer.Option(
        None, "--status", help="pending, approved, applied, rejected, cancelled, stale (repeat)."
    ),
    env: str | None = typer.Option(None, "--env", help="Only this environment."),
    flag: str | None = typer.Option(None, "--flag", help="Only this flag."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Change requests, newest first (pending and approved by default)."""
    params = {"status": status or ["pending", "approved"], "environment": env, "flag": flag}
    data = _run(url, token, database_url, lambda a: a.call("GET", "/change-requests", None, params))
    if as_json:
        print_json(data)
        return
    print_table(
        ["id", "status", "flag", "environment", "author", "approvals", "diff"],
        [
            [
                r["id"],
                r["status"],
                r["flag"],
                r["environment"],
                r["author"],
                f"{len(r['approvals'])}/{r['required_approvals']}",
                "; ".join(f"{m['field']} {m['before']}->{m['after']}" for m in r["diff"])
                or r["kind"],
            ]
            for r in data["items"]
        ],
    )


def _one(
    verb: str, number: int, reason: str | None, url: str | None, token: str | None, db: str | None
) -> dict[str, Any]:
    path = f"/change-requests/{number}" + (f"/{verb}" if verb else "")
    method = "POST" if verb else "GET"
    body = {"reason": reason} if reason is not None else None
    return _run(url, token, db, lambda a: a.call(method, path, body))


def _command(verb: str, doc: str, takes_reason: bool) -> None:
    """Register ``flagrail cr <verb>``; only a verb that records a reason has ``--reason``
    (an option that is accepted and then dropped would mislead)."""

    def show(data: dict[str, Any], as_json: bool) -> None:
        if as_json:
            print_json(data)
        else:
            _render(data)

    def command(
        number: int = Number,
        as_json: bool = AsJson,
        url: str | None = ServerUrl,
        token: str | None = Token,
        database_url: str | None = DirectDatabase,
    ) -> None:
        show(_one(verb, number, None, url, token, database_url), as_json)

    def command_with_reason(
        number: int = Number,
        reason: str | None = Reason,
        as_json: bool = AsJson,
        url: str | None = ServerUrl,
        token: str | None = Token,
        database_url: str | None = DirectDatabase,
    ) -> None:
        show(_one(verb, number, reason, url, token, database_url), as_json)

    chosen = command_with_reason if takes_reason else command
    chosen.__doc__ = doc
    app.command(verb or "show")(chosen)


_command("", "Show a change request with its diff and approvals.", False)
_command("approve", "Approve; the approval that completes the count applies it.", False)
_command("reject", "Reject (with --reason).", True)
_command("cancel", "Withdraw your request (or, as an admin, anyone's).", True)
_command("apply", "Apply an approved request (refused when the flag moved: stale).", False)


@app.command("reviews")
def reviews(
    include_closed: bool = typer.Option(False, "--all", help="Acknowledged ones too."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Break-glass changes waiting for a second person's acknowledgement."""
    params = {"all": "true" if include_closed else None}
    data = _run(url, token, database_url, lambda a: a.call("GET", "/reviews", None, params))
    if as_json:
        print_json(data)
        return
    print_table(
        ["id", "flag", "environment", "actor", "reason", "acknowledged by"],
        [
            [i["id"], i["flag"], i["environment"], i["actor"], i["reason"], i["acknowledged_by"]]
            for i in data["items"]
        ],
    )


@app.command("ack")
def acknowledge(
    item: int = typer.Argument(..., min=1, help="The review item's number."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Acknowledge a break-glass change (someone other than who broke the glass)."""
    data = _run(url, token, database_url, lambda a: a.call("POST", f"/reviews/{item}/acknowledge"))
    if as_json:
        print_json(data)
    else:
        typer.echo(f"review item {data['id']} acknowledged by {data['acknowledged_by']}")


def _print_policy(data: dict[str, Any]) -> None:
    approvals = data["required_approvals"]
    gate = f"{approvals} approval{'s' if approvals != 1 else ''}" if approvals else "no approvals"
    own = "allowed" if data["allow_self_approval"] else "not allowed"
    typer.echo(f"environment {data['environment']}: {gate}; self-approval {own}")


def register_policy(env_app: typer.Typer) -> None:
    """Add ``policy`` to ``flagrail env``."""

    @env_app.command("policy")
    def policy(
        env: str = typer.Argument(..., help="The environment."),
        approvals: int | None = typer.Option(
            None,
            "--approvals",
            min=0,
            max=5,
            help="Approvals (by distinct people) a change that raises risk needs, 0-5; "
            "0 gates nothing. Without it, show the policy.",
        ),
        allow_self_approval: bool = typer.Option(
            False,
            "--allow-self-approval/--no-self-approval",
            help="Whether the author of a request may approve it (default: no).",
        ),
        as_json: bool = AsJson,
        url: str | None = ServerUrl,
        token: str | None = Token,
        database_url: str | None = DirectDatabase,
    ) -> None:
        """Show or set an environment's approval policy (an admin for every environment
        sets it; the change is recorded in the history)."""
        path = f"/environments/{env}/policy"
        if approvals is None:
            data = _run(url, token, database_url, lambda a: a.call("GET", path))
        else:
            body = {"required_approvals": approvals, "allow_self_approval": allow_self_approval}
            data = _run(url, token, database_url, lambda a: a.call("PUT", path, body))
        if as_json:
            print_json(data)
        else:
            _print_policy(data)
