"""``flagrail plan create|list|show|schedule|pause|resume|abort|advance``: rollout plans.

Every command talks to a running server (``--url`` / ``--token``, or
``FLAGRAIL_URL`` / ``FLAGRAIL_TOKEN``): plans are advanced by the server's
scheduler, so they are made and steered there. A plan file is YAML (or JSON) in
the body form of ``POST /admin/flags/{key}/plans``::

    environment: production
    stages:
      - {tenants_on: [internal], enabled: true, hold: 30m}
      - {rollout: 5, hold: 30m}
      - {rollout: 100}
    guards:
      - {metric: auth.cache.l2.corrupt_rate, max: 0.01}

The server validates it; an error names the field (``stages.1.rollout``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml

from api.cli.backend import connect
from api.cli.flags import AsJson, ServerUrl, Token
from api.cli.output import CliError, print_json, print_table
from flags.admin_client import AdminClient

app = typer.Typer(help="Staged rollout plans and scheduled changes.", no_args_is_help=True)

Reason = typer.Option(None, "--reason", help="Why: recorded in the history.")


def _jsonable(value: Any) -> Any:
    """YAML reads timestamps as datetimes: send them as ISO-8601 text."""
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def load_plan_file(path: Path) -> Any:
    """Read a YAML or JSON plan file. Raises ``CliError`` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return _jsonable(yaml.safe_load(text))
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML: {exc}") from exc


def print_plan(plan: dict[str, Any]) -> None:
    """A plan for people: a summary line, its stages (the current one marked), guards."""
    kind = "schedule" if plan["kind"] == "schedule" else "plan"
    head = f"{kind} {plan['id']}  {plan['flag']} in {plan['environment']}  {plan['status']}" + (
        f"  next at {plan['next_at']}" if plan.get("next_at") else ""
    )
    typer.echo(head)
    if plan.get("reason"):
        typer.echo(f"reason: {plan['reason']}")
    if kind == "schedule":
        typer.echo(f"at {plan['at']}: {plan['change']}")
        return
    current = plan.get("stage")
    rows = []
    for i, stage in enumerate(plan["stages"]):
        mark = "->" if i == current else ("ok" if current is not None and i < current else "")
        rows.append(
            [
                mark,
                i,
                stage.get("rollout", ""),
                ",".join(stage.get("tenants_on", [])),
                {True: "on", False: "off"}.get(stage.get("enabled"), ""),
                stage["hold"],
            ]
        )
    print_table(["", "stage", "rollout", "tenants_on+", "enabled", "hold"], rows)
    for guard in plan.get("guards", []):
        window = f" over {guard['window']}" if guard.get("window") else ""
        typer.echo(f"guard: {guard['metric']} <= {guard['max']:g}{window}")


# #16: create at once although the environment requires approvals (an admin).
BreakGlass = typer.Option(
    False, "--break-glass", help="Admins: create now in a gated environment (needs --reason)."
)
GlassReason = typer.Option(None, "--reason", help="Why you break glass (recorded).")


def _glass(break_glass: bool, reason: str | None) -> str | None:
    """The break-glass reason to send, or None. Raises ``CliError`` (exit 2) for
    ``--break-glass`` without ``--reason``, or ``--reason`` alone."""
    if not break_glass:
        if reason is not None:
            raise CliError("--reason goes with --break-glass", exit_code=2)
        return None
    if not reason or not reason.strip():
        raise CliError("--break-glass needs --reason", exit_code=2)
    return reason


def _out(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
    else:
        print_plan(data)


@app.command("create")
def create(
    key: str,
    file: Path = typer.Option(..., "--file", "-f", help="The plan, as YAML or JSON."),
    break_glass: bool = BreakGlass,
    reason: str | None = GlassReason,
    url: str | None = ServerUrl,
    token: str | None = Token,
    as_json: bool = AsJson,
) -> None:
    """Create a plan for flag KEY; its first stage is applied at once (or at start_at).
    In an environment that requires approvals it waits as a change request."""
    body = load_plan_file(file)
    glass = _glass(break_glass, reason)
    with connect(url, token) as client:
        _out(client.create_plan(key, body, break_glass=glass), as_json)


@app.command("schedule")
def schedule(
    key: str,
    env: str = typer.Option(..., "--env", help="The environment to change."),
    at: str = typer.Option(..., "--at", help="When, ISO-8601 (e.g. 2026-12-01T02:00:00Z)."),
    enabled: bool | None = typer.Option(None, "--on/--off", help="Turn the flag on or off."),
    rollout: int | None = typer.Option(None, "--rollout", help="Percent of tenants, 0-100."),
    break_glass: bool = BreakGlass,
    reason: str | None = GlassReason,
    url: str | None = ServerUrl,
    token: str | None = Token,
    as_json: bool = AsJson,
) -> None:
    """Schedule one state change of KEY at a given time (a maintenance window); gated
    as a plan."""
    change = {k: v for k, v in {"enabled": enabled, "rollout": rollout}.items() if v is not None}
    body = {"environment": env, "at": at, "change": change}
    glass = _glass(break_glass, reason)
    with connect(url, token) as client:
        _out(client.create_schedule(key, body, break_glass=glass), as_json)


@app.command("list")
def list_plans(
    key: str, url: str | None = ServerUrl, token: str | None = Token, as_json: bool = AsJson
) -> None:
    """Plans and schedules of flag KEY, newest first."""
    with connect(url, token) as client:
        data = client.list_plans(key)
    if as_json:
        print_json(data)
        return
    print_table(
        ["id", "kind", "environment", "status", "stage", "next_at", "created_by"],
        [
            [
                p["id"],
                p["kind"],
                p["environment"],
                p["status"],
                "" if p["stage"] is None else f"{p['stage']}/{len(p.get('stages') or [1]) - 1}",
                p.get("next_at"),
                p["created_by"],
            ]
            for p in data["items"]
        ],
    )


@app.command("show")
def show(
    plan_id: int,
    url: str | None = ServerUrl,
    token: str | None = Token,
    as_json: bool = AsJson,
) -> None:
    """A plan, its stages and guards, and the history it produced (actor plan:<id>)."""
    with connect(url, token) as client:
        plan = client.get_plan(plan_id)
        steps = client.history(actor=f"plan:{plan_id}", limit=500)
    if as_json:
        print_json({**plan, "history": steps["items"]})
        return
    print_plan(plan)
    if steps["items"]:
        typer.echo("")
        print_table(
            ["at", "action", "reason"],
            [[h["at"], h["action"], h["reason"]] for h in reversed(steps["items"])],
        )


PlanStep = Callable[[AdminClient, int, str | None], dict[str, Any]]


def _add_reason_command(action: str, step: PlanStep, help_text: str) -> None:
    """Register ``plan <action> <plan_id> [--reason]``: ``step`` on the plan."""

    def command(
        plan_id: int,
        reason: str | None = Reason,
        url: str | None = ServerUrl,
        token: str | None = Token,
        as_json: bool = AsJson,
    ) -> None:
        with connect(url, token) as client:
            _out(step(client, plan_id, reason), as_json)

    app.command(action, help=help_text)(command)


_add_reason_command(
    "pause",
    lambda client, plan_id, reason: client.pause_plan(plan_id, reason=reason),
    "Stop a plan where it is; nothing advances until it is resumed.",
)
_add_reason_command(
    "resume",
    lambda client, plan_id, reason: client.resume_plan(plan_id, reason=reason),
    "Continue a paused or rolled-back plan (unkill the flag first); the hold restarts.",
)
_add_reason_command(
    "abort",
    lambda client, plan_id, reason: client.abort_plan(plan_id, reason=reason),
    "End a plan for good; the flag stays as it is.",
)


@app.command("advance")
def advance(
    plan_id: int,
    url: str | None = ServerUrl,
    token: str | None = Token,
    as_json: bool = AsJson,
) -> None:
    """Apply the next stage now, skipping the rest of the hold."""
    with connect(url, token) as client:
        _out(client.advance_plan(plan_id), as_json)
