"""``flagrail flags|set|variant|kill|unkill|history|env``: flag commands, for people and
scripts.

They talk to a running server (``--url`` / ``FLAGRAIL_URL``, ``--token`` /
``FLAGRAIL_TOKEN``). With ``--database-url`` they work directly on the database
instead (break-glass, when the server is down), still writing history, under the
actor ``cli:<os user>``. Output is a table for people, or with ``--json`` the
admin API's JSON. A failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import typer

from api.cli import unused as unused_command
from api.cli.backend import BREAK_GLASS_HINT, open_admin
from api.cli.confirm import format_confirmation
from api.cli.output import CliError, print_json, print_table
from flags.admin_client import AdminApi
from flags.errors import ServerUnavailableError
from flags.model import DEFAULT_ENVIRONMENTS

flags_app = typer.Typer(help="List, create, show and archive flags.", no_args_is_help=True)
env_app = typer.Typer(help="List and create environments.", no_args_is_help=True)
variant_app = typer.Typer(
    help="Add, rename, re-value and remove a typed flag's variants.", no_args_is_help=True
)

ServerUrl = typer.Option(
    None,
    "--url",
    envvar="FLAGRAIL_URL",
    help="Admin API base URL (default http://<FLAGRAIL_HOST>:<FLAGRAIL_PORT>).",
)
Token = typer.Option(None, "--token", envvar="FLAGRAIL_TOKEN", help="API token.")
DirectDatabase = typer.Option(
    None,
    "--database-url",
    help="Break-glass: work directly on this database instead of the server.",
)
AsJson = typer.Option(False, "--json", help="Print the API's JSON instead of a table.")
Envs = typer.Option(None, "--env", help="An environment (repeat for more).")

TENANTS_SHOWN = 3


def run(
    call: Callable[[AdminApi], dict[str, Any]],
    render: Callable[[dict[str, Any]], None],
    as_json: bool,
    url: str | None,
    token: str | None,
    database_url: str | None,
) -> None:
    """Run ``call`` on the admin API the options name (``open_admin``); print its JSON,
    or ``render`` it."""
    admin = open_admin(url, token, database_url)
    try:
        data = call(admin)
    except ServerUnavailableError as exc:
        raise CliError(f"{exc}; {BREAK_GLASS_HINT}") from exc
    finally:
        admin.close()
    if as_json:
        print_json(data)
    else:
        render(data)


# ------------------------------------------------------------------ rendering
def ordered_environments(names: Iterable[str]) -> list[str]:
    """The default pipeline order (development .. production) first, then the rest by name."""
    names = set(names)
    known = [n for n in DEFAULT_ENVIRONMENTS if n in names]
    return known + sorted(names - set(known))


def describe_state(state: dict[str, Any]) -> str:
    """A short summary of one environment's state: ``killed``, ``off``, ``on 50% +2 -1``."""
    if state.get("killed"):
        return "KILLED"
    if not state.get("enabled"):
        return "off"
    parts = [f"on {state.get('rollout', 0)}%"]
    if state.get("tenants_on"):
        parts.append(f"+{len(state['tenants_on'])}")
    if state.get("tenants_off"):
        parts.append(f"-{len(state['tenants_off'])}")
    return " ".join(parts)


# ------------------------------------------------------------------ typed flags (#19)
def parse_value(flag_type: str, text: str, where: str) -> Any:
    """A variant value from the command line: a string flag's value is the text as it
    is; a number or json flag's is JSON (``30``, ``0.25``, ``{"a": 1}``). Raises
    ``CliError`` naming ``where``; the server checks the value against the type."""
    if flag_type == "string":
        return text
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{where}: {text!r:.60} is not a {flag_type} value (JSON)", 2) from exc


def parse_pairs(items: Iterable[str], where: str) -> list[tuple[str, str]]:
    """``name=value`` items (each may hold several, comma-separated) as pairs."""
    pairs = []
    for item in items:
        for part in item.split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise CliError(f"{where}: expected name=value, got {part!r:.60}", exit_code=2)
            pairs.append((name.strip(), value.strip()))
    return pairs


def parse_split(text: str) -> list[dict[str, Any]]:
    """``gold=200,silver=800`` -> ``[{"variant": "gold", "weight": 200}, ...]``; ``none``
    clears the split."""
    if text.strip().lower() == "none":
        return []
    split = []
    for name, weight in parse_pairs([text], "--split"):
        if not weight.isdigit():
            raise CliError(f"--split: {name}'s weight must be 0-1000, got {weight!r}", 2)
        split.append({"variant": name, "weight": int(weight)})
    return split


def describe_variants(state: dict[str, Any]) -> str:
    """A typed state's variants in a few words: ``gold; split gold=200,silver=800;
    off bronze; 2 pinned`` ("" for a boolean flag)."""
    if "on_variant" not in state:
        return ""
    parts = [str(state["on_variant"])]
    if state.get("split"):
        parts.append("split " + ",".join(f"{s['variant']}={s['weight']}" for s in state["split"]))
    parts.append(f"off {state['off_variant']}")
    if state.get("tenant_variants"):
        parts.append(f"{len(state['tenant_variants'])} pinned")
    return "; ".join(parts)


def _tenants(tenants: Sequence[str]) -> str:
    shown = ", ".join(tenants[:TENANTS_SHOWN])
    more = len(tenants) - TENANTS_SHOWN
    return f"{shown} (+{more} more)" if more > 0 else shown


def _time(value: str | None) -> str:
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return value


def _print_flags(data: dict[str, Any]) -> None:
    items = data["items"]
    envs = ordered_environments(env for item in items for env in item["environments"])
    rows = []
    for item in items:
        states = item["environments"]
        rows.append(
            [
                item["key"],
                item["kind"],
                item.get("owner"),
                "yes" if item["archived"] else "",
                *[describe_state(states[e]) if e in states else "" for e in envs],
            ]
        )
    print_table(["key", "kind", "owner", "archived", *envs], rows)


def _print_flag(flag: dict[str, Any]) -> None:
    facts = [flag["kind"]]
    if flag.get("owner"):
        facts.append(f"owner {flag['owner']}")
    if flag.get("tags"):
        facts.append("tags " + ",".join(flag["tags"]))
    if flag["archived"]:
        facts.append("ARCHIVED")
    if flag.get("type"):
        facts.insert(0, flag["type"])
    sys.stdout.write(f"{flag['key']}  ({'; '.join(facts)})\n")
    if flag.get("description"):
        sys.stdout.write(f"{flag['description']}\n")
    if flag.get("variants"):
        shown = ", ".join(
            f"{v['name']}={_short(json.dumps(v['value'], ensure_ascii=False))}"
            for v in flag["variants"]
        )
        sys.stdout.write(f"variants: {shown}\n")
    if flag.get("off_variant") is not None:
        # A typed flag: what an environment created later starts with.
        sys.stdout.write(
            f"new environments: serve {flag['on_variant']}; off {flag['off_variant']}\n"
        )
    sys.stdout.write("\n")
    states = flag["environments"]
    rows = []
    for env in ordered_environments(states):
        s = states[env]
        killed = ""
        if s["killed"]:
            killed = f"yes: {s['kill_reason']} ({s['killed_by']}, {_time(s['killed_at'])})"
        rows.append(
            [
                env,
                describe_state(s),
                "on" if s["enabled"] else "off",
                f"{s['rollout']}%",
                _tenants(s["tenants_on"]),
                _tenants(s["tenants_off"]),
                killed,
                s["version"],
                *([describe_variants(s)] if flag.get("type") else []),
            ]
        )
    print_table(
        ["environment", "state", "enabled", "rollout", "tenants_on", "tenants_off", "killed", "v"]
        + (["variants"] if flag.get("type") else []),
        rows,
    )
    for env in ordered_environments(states):
        pins = states[env].get("tenant_variants")
        if pins:
            shown = [f"{tenant}={name}" for tenant, name in sorted(pins.items())]
            sys.stdout.write(f"pinned in {env}: {_tenants(shown)}\n")


def _print_state(state: dict[str, Any]) -> None:
    details = [describe_state(state)]
    if "on_variant" in state:
        details.append("serves " + describe_variants(state))
    if state["tenants_on"]:
        details.append("tenants on: " + _tenants(state["tenants_on"]))
    if state["tenants_off"]:
        details.append("tenants off: " + _tenants(state["tenants_off"]))
    typer.echo(
        f"{state['flag']} in {state['environment']}: {'; '.join(details)} "
        f"(version {state['version']})"
    )


def _print_environments(data: dict[str, Any]) -> None:
    envs = {e["name"]: e for e in data["items"]}
    print_table(
        ["name", "version", "created_at"],
        [[n, envs[n]["version"], _time(envs[n]["created_at"])] for n in ordered_environments(envs)],
    )


def _print_kill(result: dict[str, Any], verb: str) -> None:
    changed = set(result["changed"])
    rows = [
        [env, describe_state(result["environments"][env]), verb if env in changed else "unchanged"]
        for env in ordered_environments(result["environments"])
    ]
    print_table(["environment", "state", "change"], rows)


def summarize_change(entry: dict[str, Any]) -> str:
    """What one history row changed, in a few words (``rollout 0->50``, ``+acme on``)."""
    before, after = entry.get("before"), entry.get("after")
    action = entry["action"]
    if action == "flag.create":
        return "created"
    if action == "flag.archive":
        return "archived"
    if action in ("token.create", "token.revoke") and isinstance(after, dict):
        scope = ",".join(after.get("environments") or ["*"])
        return f"token {after.get('name')} ({after.get('role')}, {scope})"
    if action == "environment.create" and isinstance(after, dict):
        return f"environment {after.get('name')}"
    if not isinstance(before, dict) or not isinstance(after, dict):
        return ""
    parts = []
    for name in ("enabled", "rollout", "killed", "description", "owner", "kind", "tags"):
        if name in after and before.get(name) != after.get(name):
            parts.append(f"{name} {_short(before.get(name))}->{_short(after.get(name))}")
    parts += _variant_changes(before, after)
    for name in ("tenants_on", "tenants_off"):
        old, new = set(before.get(name) or ()), set(after.get(name) or ())
        label = name.removeprefix("tenants_")
        parts += [f"+{t} {label}" for t in sorted(new - old)[:TENANTS_SHOWN]]
        parts += [f"-{t} {label}" for t in sorted(old - new)[:TENANTS_SHOWN]]
        hidden = (
            len(new ^ old) - min(len(new - old), TENANTS_SHOWN) - min(len(old - new), TENANTS_SHOWN)
        )
        if hidden > 0:
            parts.append(f"(+{hidden} more tenant changes)")
    return ", ".join(parts)


def _variant_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What a history row changed of a typed flag (#19): variants added, removed or
    re-valued, off/on variant, split and pinned tenants."""
    parts = []
    if "variants" in after and before.get("variants") != after.get("variants"):
        old_list, new_list = before.get("variants") or [], after.get("variants") or []
        renames = {}
        if len(old_list) == len(new_list):  # a rename keeps the variant's place and value
            renames = {
                o["name"]: n["name"]
                for o, n in zip(old_list, new_list, strict=True)
                if o["name"] != n["name"] and o["value"] == n["value"]
            }
        parts += [f"variant {o}->{n} (renamed)" for o, n in renames.items()]
        old = {v["name"]: v["value"] for v in old_list if v["name"] not in renames}
        new = {v["name"]: v["value"] for v in new_list if v["name"] not in renames.values()}
        parts += [f"+variant {n}" for n in new if n not in old]
        parts += [f"-variant {n}" for n in old if n not in new]
        parts += [
            f"variant {n} {_short(json.dumps(old[n]))}->{_short(json.dumps(new[n]))}"
            for n in new
            if n in old and old[n] != new[n]
        ]
    for name in ("off_variant", "on_variant"):
        if name in after and before.get(name) != after.get(name):
            parts.append(f"{name} {_short(before.get(name))}->{_short(after.get(name))}")
    if "split" in after and before.get("split") != after.get("split"):

        def split(value: Any) -> str:
            return ",".join(f"{s['variant']}={s['weight']}" for s in value or ()) or "none"

        parts.append(f"split {split(before.get('split'))}->{split(after.get('split'))}")
    if "tenant_variants" in after:
        old_pins = before.get("tenant_variants") or {}
        new_pins = after.get("tenant_variants") or {}
        changed = sorted(
            t for t in set(old_pins) | set(new_pins) if old_pins.get(t) != new_pins.get(t)
        )
        for tenant in changed[:TENANTS_SHOWN]:
            old_pin, new_pin = old_pins.get(tenant), new_pins.get(tenant)
            if old_pin is None:
                parts.append(f"+pin {tenant}={new_pin}")
            elif new_pin is None:
                parts.append(f"-pin {tenant}")
            else:
                parts.append(f"pin {tenant} {old_pin}->{new_pin}")
        if len(changed) > TENANTS_SHOWN:
            parts.append(f"(+{len(changed) - TENANTS_SHOWN} more pin changes)")
    return parts


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "[]"
    text = str(value)
    return text if len(text) <= 30 else text[:27] + "..."


def _print_history(page: dict[str, Any]) -> None:
    rows = [
        [
            _time(e["at"]),
            e["actor"],
            e["action"],
            e.get("flag"),
            e.get("environment"),
            summarize_change(e),
            e.get("reason"),
        ]
        for e in page["items"]
    ]
    print_table(["at", "actor", "action", "flag", "env", "change", "reason"], rows)
    if page.get("next_cursor"):
        typer.echo(f"more: add --cursor {page['next_cursor']}", err=True)


# ------------------------------------------------------------------ commands
@flags_app.command("list")
def list_flags(
    kind: str | None = typer.Option(None, "--kind", help="Only flags of this kind."),
    tag: str | None = typer.Option(None, "--tag", help="Only flags with this tag."),
    archived: bool | None = typer.Option(
        None, "--archived/--active", help="Only archived, or only active, flags."
    ),
    q: str | None = typer.Option(None, "--query", "-q", help="Key or description contains."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """List flags with a one-word state per environment."""
    run(
        lambda admin: admin.list_flags(kind=kind, tag=tag, archived=archived, q=q),
        _print_flags,
        as_json,
        url,
        token,
        database_url,
    )


@flags_app.command("create")
def create_flag(
    key: str = typer.Argument(..., help="Flag key, like auth.cache.l2."),
    description: str = typer.Option("", "--description", "-d"),
    kind: str = typer.Option(
        "release", "--kind", help="release, operational, kill-switch or permission."
    ),
    owner: str | None = typer.Option(None, "--owner"),
    tag: list[str] | None = typer.Option(None, "--tag", help="A tag (repeat for more)."),
    flag_type: str = typer.Option(
        "boolean", "--type", help="boolean, string, number or json (fixed from now on)."
    ),
    variant: list[str] | None = typer.Option(
        None,
        "--variant",
        help="A typed flag's variant name=value (repeat); number and json values are JSON.",
    ),
    off_variant: str | None = typer.Option(
        None, "--off-variant", help="The safe variant: served when off, also under a kill."
    ),
    on_variant: str | None = typer.Option(
        None, "--on-variant", help="The variant served when on (default: the off variant)."
    ),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Create a flag, off in every environment. A typed flag (--type string, number or
    json) declares its variants and its safe --off-variant."""
    typed: dict[str, Any] = {}
    if flag_type != "boolean" or variant or off_variant or on_variant:
        typed = {"type": flag_type, "off_variant": off_variant, "on_variant": on_variant}
    if variant:
        pairs = [v.partition("=") for v in variant]
        if any(not sep or not name for name, sep, _ in pairs):
            raise CliError("--variant: expected name=value", exit_code=2)
        typed["variants"] = [
            {"name": name, "value": parse_value(flag_type, value, f"--variant {name}")}
            for name, _, value in pairs
        ]
    run(
        lambda admin: admin.create_flag(
            key, description=description, kind=kind, owner=owner, tags=tag or [], **typed
        ),
        _print_flag,
        as_json,
        url,
        token,
        database_url,
    )


@flags_app.command("show")
def show_flag(
    key: str,
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Show a flag and its state in every environment."""
    run(lambda admin: admin.get_flag(key), _print_flag, as_json, url, token, database_url)


@flags_app.command("update")
def update_flag(
    key: str,
    description: str | None = typer.Option(None, "--description", "-d"),
    kind: str | None = typer.Option(
        None, "--kind", help="release, operational, kill-switch or permission."
    ),
    owner: str | None = typer.Option(None, "--owner", help="The owner ('' clears it)."),
    tag: list[str] | None = typer.Option(None, "--tag", help="Replace the tags (repeat)."),
    off_variant: str | None = typer.Option(
        None, "--off-variant", help="Typed flag: the off variant new environments start with."
    ),
    on_variant: str | None = typer.Option(
        None, "--on-variant", help="Typed flag: the on variant new environments start with."
    ),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Change a flag's description, kind, owner or tags (shared by every environment)."""
    changes: dict[str, Any] = {
        "description": description,
        "kind": kind,
        "tags": tag,
        "off_variant": off_variant,
        "on_variant": on_variant,
    }
    changes = {name: value for name, value in changes.items() if value is not None}
    if owner is not None:
        changes["owner"] = owner or None
    if not changes:
        raise CliError(
            "nothing to change: give --description, --kind, --owner, --tag, --off-variant or "
            "--on-variant",
            exit_code=2,
        )
    run(
        lambda admin: admin.update_flag(key, **changes),
        _print_flag,
        as_json,
        url,
        token,
        database_url,
    )


@flags_app.command("archive")
def archive_flag(
    key: str,
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Archive a flag: SDKs then see it as missing. Its history is kept."""
    run(
        lambda admin: admin.archive_flag(key),
        lambda flag: typer.echo(f"archived {flag['key']}"),
        as_json,
        url,
        token,
        database_url,
    )


flags_app.command("unused")(unused_command.unused)


# #16: apply a change a gated environment would hold for approval, at once (an admin).
BreakGlass = typer.Option(
    False,
    "--break-glass",
    help="Admins: apply now although the environment requires approvals (needs "
    "--reason; recorded, and listed for review until a second person acknowledges it).",
)


def register(app: typer.Typer) -> None:
    """Add ``set``, ``variant``, ``kill``, ``unkill`` and ``history`` to the top-level
    ``app``."""
    app.add_typer(variant_app, name="variant")

    @app.command("set")
    def set_state(
        key: str,
        env: str = typer.Option(..., "--env", help="The environment to change."),
        enabled: bool | None = typer.Option(None, "--on/--off", help="Turn the flag on or off."),
        rollout: int | None = typer.Option(None, "--rollout", help="Percent of tenants, 0-100."),
        tenant_on: list[str] | None = typer.Option(
            None, "--tenant-on", help="Always on for this tenant (repeat for more)."
        ),
        tenant_off: list[str] | None = typer.Option(
            None, "--tenant-off", help="Always off for this tenant (repeat for more)."
        ),
        tenant_clear: list[str] | None = typer.Option(
            None, "--tenant-clear", help="Take this tenant off both lists (repeat for more)."
        ),
        reason: str | None = typer.Option(None, "--reason", help="Recorded in the history."),
        if_version: int | None = typer.Option(
            None, "--if-version", help="Only if the state is still at this version."
        ),
        on_variant: str | None = typer.Option(
            None, "--on-variant", help="Typed flag: the variant served when on."
        ),
        off_variant: str | None = typer.Option(
            None, "--off-variant", help="Typed flag: the safe variant (off, killed)."
        ),
        split: str | None = typer.Option(
            None,
            "--split",
            help="Typed flag: weights over variants summing to 1000, like gold=200,silver=800 "
            "('none' clears it).",
        ),
        pin: list[str] | None = typer.Option(
            None, "--pin", help="Typed flag: serve tenant=variant to that tenant (repeat)."
        ),
        unpin: list[str] | None = typer.Option(
            None, "--unpin", help="Typed flag: take this tenant's pin away (repeat)."
        ),
        break_glass: bool = BreakGlass,
        as_json: bool = AsJson,
        url: str | None = ServerUrl,
        token: str | None = Token,
        database_url: str | None = DirectDatabase,
    ) -> None:
        """Change a flag's state in one environment; tenants are added to the lists.

        A typed flag's --pin/--unpin edit its pinned tenants: they read the state and
        send it back conditional on its version (a concurrent change fails: try again)."""
        body: dict[str, Any] = {}
        if enabled is not None:
            body["enabled"] = enabled
        if rollout is not None:
            body["rollout"] = rollout
        if tenant_on:
            body["tenants_on_add"] = tenant_on
        if tenant_off:
            body["tenants_off_add"] = tenant_off
        if tenant_clear:
            body["tenants_on_remove"] = tenant_clear
            body["tenants_off_remove"] = tenant_clear
        # Typed flags (#19).
        if on_variant is not None:
            body["on_variant"] = on_variant
        if off_variant is not None:
            body["off_variant"] = off_variant
        if split is not None:
            body["split"] = parse_split(split)
        pins = dict(parse_pairs(pin or [], "--pin"))
        if not body and not pins and not unpin:
            raise CliError(
                "nothing to change: give --on, --off, --rollout, --tenant-on, --tenant-off, "
                "--tenant-clear, --on-variant, --off-variant, --split, --pin or --unpin",
                exit_code=2,
            )

        def call(admin: AdminApi) -> dict[str, Any]:
            version = if_version
            if pins or unpin:
                state = admin.get_flag(key)["environments"].get(env)
                if state is None:
                    raise CliError(f"flag {key!r} has no state in {env!r}")
                current = dict(state.get("tenant_variants") or {})
                current.update(pins)
                for tenant in unpin or ():
                    current.pop(tenant, None)
                body["tenant_variants"] = current
                version = state["version"] if version is None else version
            return admin.set_state(
                env, key, reason=reason, if_version=version, break_glass=break_glass, **body
            )

        run(
            call,
            _print_state,
            as_json,
            url,
            token,
            database_url,
        )

    @app.command("kill")
    def kill(
        key: str,
        reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
        env: list[str] | None = Envs,
        wait: str | None = typer.Option(
            None, "--wait", help="Wait up to this long (like 2s) for SDKs to confirm."
        ),
        as_json: bool = AsJson,
        url: str | None = ServerUrl,
        token: str | None = Token,
        database_url: str | None = DirectDatabase,
    ) -> None:
        """Kill a flag: off for everyone, in every environment of the token unless --env."""
        if wait is not None and database_url:
            typer.echo("flagrail: note: --wait needs a server; ignored here", err=True)

        def render(result: dict[str, Any]) -> None:
            _print_kill(result, "killed")
            if wait is not None and not database_url:
                typer.echo(format_confirmation(result))

        run(
            lambda admin: admin.kill(env or None, key, reason=reason, wait=wait),
            render,
            as_json,
            url,
            token,
            database_url,
        )

    @app.command("unkill")
    def unkill(
        key: str,
        reason: str = typer.Option(..., "--reason", help="Why; recorded in the history."),
        env: list[str] | None = Envs,
        break_glass: bool = BreakGlass,
        as_json: bool = AsJson,
        url: str | None = ServerUrl,
        token: str | None = Token,
        database_url: str | None = DirectDatabase,
    ) -> None:
        """Lift a kill; the flag's state before the kill applies again."""
        run(
            lambda admin: admin.unkill(env or None, key, reason=reason, break_glass=break_glass),
            lambda result: _print_kill(result, "unkilled"),
            as_json,
            url,
            token,
            database_url,
        )

    @app.command("history")
    def history(
        key: str | None = typer.Argument(None, help="Only this flag."),
        env: str | None = typer.Option(None, "--env", help="Only this environment."),
        since: str | None = typer.Option(
            None, "--since", help="ISO-8601 time, or a duration like 7d."
        ),
        until: str | None = typer.Option(None, "--until", help="ISO-8601 time or a duration."),
        action: str | None = typer.Option(None, "--action", help="Like kill or state.update."),
        actor: str | None = typer.Option(None, "--actor", help="Only changes by this actor."),
        limit: int = typer.Option(20, "--limit", help="Rows per page (1-500)."),
        cursor: str | None = typer.Option(None, "--cursor", help="next_cursor of a page."),
        as_json: bool = AsJson,
        url: str | None = ServerUrl,
        token: str | None = Token,
        database_url: str | None = DirectDatabase,
    ) -> None:
        """Read the change history, newest first."""
        filters = {
            "flag": key,
            "environment": env,
            "since": since,
            "until": until,
            "action": action,
            "actor": actor,
            "limit": limit,
            "cursor": cursor,
        }
        run(
            lambda admin: admin.history(**filters),
            _print_history,
            as_json,
            url,
            token,
            database_url,
        )


@env_app.command("list")
def list_environments(
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """List environments."""
    run(
        lambda admin: admin.list_environments(),
        _print_environments,
        as_json,
        url,
        token,
        database_url,
    )


@env_app.command("create")
def create_environment(
    name: str,
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Create an environment; every flag starts off in it."""
    run(
        lambda admin: admin.create_environment(name),
        lambda env: typer.echo(f"created environment {env['name']}"),
        as_json,
        url,
        token,
        database_url,
    )


# ------------------------------------------------------------------ variants (#19)
def _flag_type(admin: AdminApi, key: str) -> str:
    flag_type = admin.get_flag(key).get("type")
    if flag_type is None:
        raise CliError(f"flag {key!r} is a boolean flag: its variants are on and off")
    return str(flag_type)


@variant_app.command("add")
def add_variant(
    key: str = typer.Argument(..., help="A typed flag."),
    name: str = typer.Argument(..., help="The new variant's name."),
    value: str = typer.Argument(..., help="Its value (JSON for number and json flags)."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Declare a variant on a typed flag (every environment can then serve it)."""
    run(
        lambda admin: admin.add_variant(
            key, name, parse_value(_flag_type(admin, key), value, "value")
        ),
        _print_flag,
        as_json,
        url,
        token,
        database_url,
    )


@variant_app.command("set")
def set_variant(
    key: str = typer.Argument(..., help="A typed flag."),
    name: str = typer.Argument(..., help="The variant."),
    value: str = typer.Argument(..., help="Its new value (JSON for number and json flags)."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Change the value a variant serves, in every environment."""
    run(
        lambda admin: admin.set_variant_value(
            key, name, parse_value(_flag_type(admin, key), value, "value")
        ),
        _print_flag,
        as_json,
        url,
        token,
        database_url,
    )


@variant_app.command("rename")
def rename_variant(
    key: str = typer.Argument(..., help="A typed flag."),
    name: str = typer.Argument(..., help="The variant."),
    new_name: str = typer.Argument(..., help="Its new name."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Rename a variant; every environment's use of it follows."""
    run(
        lambda admin: admin.rename_variant(key, name, new_name),
        _print_flag,
        as_json,
        url,
        token,
        database_url,
    )


@variant_app.command("remove")
def remove_variant(
    key: str = typer.Argument(..., help="A typed flag."),
    name: str = typer.Argument(..., help="The variant."),
    as_json: bool = AsJson,
    url: str | None = ServerUrl,
    token: str | None = Token,
    database_url: str | None = DirectDatabase,
) -> None:
    """Remove a variant no environment serves (refused, naming where, otherwise)."""
    run(
        lambda admin: admin.remove_variant(key, name),
        _print_flag,
        as_json,
        url,
        token,
        database_url,
    )
