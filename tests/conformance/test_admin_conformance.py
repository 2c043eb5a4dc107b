"""Conformance: every admin scenario gives the same answers and writes the same history
rows through the HTTP API (``AdminClient``) as directly on the database
(``DatabaseAdmin``), on SQLite and PostgreSQL.

Each scenario runs once per backend on identical databases. Answers are compared
step by step after blanking what differs by nature (times, token values and ids,
request ids); errors by class, field and message (the client prefixes the
server's message with ``"<status> <code>: "``). Then the two history tables are
compared row by row.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from flags import errors
from flags.admin_client import AdminApi
from flags.history import HistoryQuery
from flags.store.sql import SqlFlagStore

Step = Callable[[AdminApi], Any]
Scenario = list[tuple[str, Step]]

TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
STATUS_PREFIX = re.compile(r"^\d{3} [a-z_]+: ")
FLAG = "checkout.v2"
OTHER = "search.ranking"


def blank(value: Any) -> Any:
    """``value`` with times, token values, token ids and request ids blanked, and a
    history row's token columns too: the HTTP front end acts with a token, the
    break-glass database mode with none (its actor is the same ``cli:<user>``)."""
    if isinstance(value, dict):
        out = {k: blank(v) for k, v in value.items()}
        if {"id", "name", "role"} <= value.keys():  # a token: its id is random
            out["id"] = "<token id>"
        if "token" in value and isinstance(value["token"], str):
            out["token"] = "<secret>"
        if "request_id" in value:
            out["request_id"] = "<request>"
        if "token_id" in value:
            out["token_id"] = out["token_name"] = "<token>"
        return out
    if isinstance(value, list):
        return [blank(v) for v in value]
    if isinstance(value, str) and TIME.match(value):
        return "<time>"
    return value


def outcome(step: Step, admin: AdminApi) -> Any:
    """The step's blanked answer, or its error as (class, field, message)."""
    try:
        return ("ok", blank(step(admin)))
    except errors.FlagrailError as exc:
        current = blank(exc.current) if isinstance(exc, errors.VersionConflictError) else None
        message = STATUS_PREFIX.sub("", exc.message)
        return ("error", type(exc).__name__, exc.field, message, current)


def history_rows(store: SqlFlagStore) -> list[dict[str, Any]]:
    """Every history row, oldest first, blanked."""
    page = store.list_history(HistoryQuery(limit=500))
    assert page.next_cursor is None
    return [blank(e.to_dict()) for e in reversed(page.items)]


# ---------------------------------------------------------------------- scenarios
FLAGS: Scenario = [
    ("create", lambda a: a.create_flag(FLAG, description="new checkout", tags=["shop"])),
    ("create with owner", lambda a: a.create_flag(OTHER, kind="operational", owner="search")),
    ("create again", lambda a: a.create_flag(FLAG)),
    ("create bad key", lambda a: a.create_flag("Bad Key")),
    ("create bad kind", lambda a: a.create_flag("x.y", kind="nope")),
    ("get", lambda a: a.get_flag(FLAG)),
    ("get unknown", lambda a: a.get_flag("no.such")),
    ("get bad key", lambda a: a.get_flag("Bad!")),
    ("list", lambda a: a.list_flags()),
    ("list by tag", lambda a: a.list_flags(tag="shop")),
    ("list by kind", lambda a: a.list_flags(kind="operational")),
    ("list by text", lambda a: a.list_flags(q="checkout")),
    ("update", lambda a: a.update_flag(FLAG, description="v2", owner="payments", tags=["x"])),
    ("update clears owner", lambda a: a.update_flag(FLAG, owner=None)),
    ("update kind", lambda a: a.update_flag(OTHER, kind="kill-switch")),
    ("update unknown field", lambda a: a.update_flag(FLAG, archived=True)),
    ("update unknown flag", lambda a: a.update_flag("no.such", description="d")),
    ("archive", lambda a: a.archive_flag(OTHER)),
    ("archive again", lambda a: a.archive_flag(OTHER)),
    ("list archived", lambda a: a.list_flags(archived=True)),
    ("list active", lambda a: a.list_flags(archived=False)),
    ("set archived", lambda a: a.set_state("beta", OTHER, enabled=True)),
]

STATES: Scenario = [
    ("create", lambda a: a.create_flag(FLAG)),
    ("on", lambda a: a.set_state("beta", FLAG, enabled=True, reason="try it")),
    ("rollout", lambda a: a.set_state("beta", FLAG, rollout=30)),
    ("tenants add", lambda a: a.set_state("beta", FLAG, tenants_on_add=["acme", "initech"])),
    ("tenants off", lambda a: a.set_state("beta", FLAG, tenants_off_add=["acme"])),
    ("tenants replace", lambda a: a.set_state("beta", FLAG, tenants_on=["globex"])),
    ("tenants remove", lambda a: a.set_state("beta", FLAG, tenants_off_remove=["acme"])),
    ("no change", lambda a: a.set_state("beta", FLAG, rollout=30)),
    ("if version ok", lambda a: a.set_state("beta", FLAG, rollout=40, if_version=6)),
    ("if version stale", lambda a: a.set_state("beta", FLAG, rollout=50, if_version=2)),
    ("rollout over 100", lambda a: a.set_state("beta", FLAG, rollout=101)),
    ("rollout a string", lambda a: a.set_state("beta", FLAG, rollout="50")),
    ("enabled a number", lambda a: a.set_state("beta", FLAG, enabled=1)),
    ("tenant empty", lambda a: a.set_state("beta", FLAG, tenants_on=[""])),
    ("unknown field", lambda a: a.set_state("beta", FLAG, version=3)),
    ("unknown environment", lambda a: a.set_state("qa", FLAG, enabled=True)),
    ("bad environment", lambda a: a.set_state("PROD", FLAG, enabled=True)),
    ("unknown flag", lambda a: a.set_state("beta", "no.such", enabled=True)),
    ("get", lambda a: a.get_flag(FLAG)),
]

KILLS: Scenario = [
    ("create", lambda a: a.create_flag(FLAG)),
    ("on", lambda a: a.set_state("production", FLAG, enabled=True, rollout=100)),
    ("kill everywhere", lambda a: a.kill(None, FLAG, reason="500s at checkout")),
    ("kill again", lambda a: a.kill(None, FLAG, reason="still")),
    ("unkill one", lambda a: a.unkill("beta", FLAG, reason="fixed in beta")),
    ("unkill two", lambda a: a.unkill(["staging", "development"], FLAG, reason="fixed")),
    ("kill one", lambda a: a.kill("beta", FLAG, reason="again")),
    ("kill blank reason", lambda a: a.kill(None, FLAG, reason="  ")),
    ("kill empty reason", lambda a: a.kill(None, FLAG, reason="")),
    ("kill unknown environment", lambda a: a.kill("qa", FLAG, reason="r")),
    ("kill bad environment", lambda a: a.kill("B!", FLAG, reason="r")),
    ("kill unknown flag", lambda a: a.kill(None, "no.such", reason="r")),
    ("unkill everywhere", lambda a: a.unkill(None, FLAG, reason="all clear")),
    ("get", lambda a: a.get_flag(FLAG)),
]

TOKENS_AND_ENVIRONMENTS: Scenario = [
    ("environments", lambda a: a.list_environments()),
    ("create environment", lambda a: a.create_environment("qa")),
    ("create it again", lambda a: a.create_environment("qa")),
    ("create bad name", lambda a: a.create_environment("Bad Env")),
    ("environments after", lambda a: a.list_environments()),
    ("create token", lambda a: a.create_token("ci", "reader", ["qa"])),
    ("create unscoped token", lambda a: a.create_token("ops", "operator")),
    ("create token bad role", lambda a: a.create_token("x", "root")),
    ("create token unknown environment", lambda a: a.create_token("x", "reader", ["nope"])),
    ("list tokens", lambda a: a.list_tokens()),
    ("revoke unknown token", lambda a: a.revoke_token("nope")),
    ("flag in the new environment", lambda a: a.create_flag(FLAG)),
    ("kill in qa", lambda a: a.kill("qa", FLAG, reason="qa only")),
]

PLANS: Scenario = [
    ("create flag", lambda a: a.create_flag(FLAG)),
    (
        "create plan",
        lambda a: a.create_plan(
            FLAG,
            {
                "environment": "production",
                "stages": [
                    {"tenants_on": ["internal"], "enabled": True, "hold": "30m"},
                    {"rollout": 5, "hold": "30m"},
                    {"rollout": 100},
                ],
                "guards": [{"metric": f"{FLAG}.error_rate", "max": 0.01}],
            },
        ),
    ),
    ("second plan refused", lambda a: a.create_plan(FLAG, {"environment": "production"})),
    (
        "plan going down",
        lambda a: a.create_plan(
            FLAG,
            {"environment": "beta", "stages": [{"rollout": 5, "hold": "1m"}, {"rollout": 2}]},
        ),
    ),
    ("plan for unknown flag", lambda a: a.create_plan("no.such", {"environment": "beta"})),
    ("get plan", lambda a: a.get_plan(1)),
    ("get unknown plan", lambda a: a.get_plan(999)),
    ("advance", lambda a: a.advance_plan(1)),
    ("pause", lambda a: a.pause_plan(1, reason="watching")),
    ("pause again", lambda a: a.pause_plan(1)),
    ("resume", lambda a: a.resume_plan(1, reason="looks fine")),
    ("abort", lambda a: a.abort_plan(1, reason="stop")),
    ("advance aborted", lambda a: a.advance_plan(1)),
    (
        "schedule",
        lambda a: a.create_schedule(
            FLAG, {"environment": "beta", "at": "2999-12-01T02:00:00Z", "change": {"rollout": 10}}
        ),
    ),
    (
        "schedule in the past",
        lambda a: a.create_schedule(
            FLAG, {"environment": "beta", "at": "2001-01-01T00:00:00Z", "change": {"rollout": 1}}
        ),
    ),
    (
        "schedule empty change",
        lambda a: a.create_schedule(
            FLAG, {"environment": "beta", "at": "2999-12-01T02:00:00Z", "change": {}}
        ),
    ),
    ("list plans", lambda a: a.list_plans(FLAG)),
    ("unused report", lambda a: a.unused("0s")),
    ("unused report bad since", lambda a: a.unused("soon")),
]


def _history_setup(a: AdminApi) -> Any:
    a.create_flag(FLAG)
    a.create_flag(OTHER)
    for rollout in (10, 20, 30):
        a.set_state("beta", FLAG, rollout=rollout)
    a.kill("production", OTHER, reason="drill")
    return a.set_state("staging", OTHER, enabled=True)


HISTORY: Scenario = [
    ("setup", _history_setup),
    ("all", lambda a: a.history()),
    ("by flag", lambda a: a.history(flag=FLAG)),
    ("by environment", lambda a: a.history(environment="beta")),
    ("by action", lambda a: a.history(action="kill")),
    ("by actor", lambda a: a.history(actor="setup")),
    ("since an hour ago", lambda a: a.history(since="1h", action="flag.create")),
    ("until long ago", lambda a: a.history(until="2000-01-01T00:00:00Z")),
    ("first page of two", lambda a: a.history(limit=2)),
    ("second page", lambda a: a.history(limit=2, cursor=a.history(limit=2)["next_cursor"])),
    ("unknown flag", lambda a: a.history(flag="no.such")),
    ("bad cursor", lambda a: a.history(cursor="garbage")),
    ("bad since", lambda a: a.history(since="yesterday")),
]

TIERS = [{"name": "bronze", "value": "b"}, {"name": "silver", "value": "s"}]

TYPED: Scenario = [  # typed flags (#19)
    (
        "create string flag",
        lambda a: a.create_flag(FLAG, type="string", variants=TIERS, off_variant="bronze"),
    ),
    (
        "create number flag",
        lambda a: a.create_flag(
            OTHER, type="number", variants=[{"name": "ttl", "value": 30}], off_variant="ttl"
        ),
    ),
    ("create without off variant", lambda a: a.create_flag("x.y", type="json", variants=TIERS)),
    ("create bad type", lambda a: a.create_flag("x.y", type="colour")),
    (
        "create bad value",
        lambda a: a.create_flag(
            "x.y", type="number", variants=[{"name": "n", "value": "1"}], off_variant="n"
        ),
    ),
    ("add variant", lambda a: a.add_variant(FLAG, "gold", "g")),
    ("add it again", lambda a: a.add_variant(FLAG, "gold", "x")),
    ("add bad value", lambda a: a.add_variant(OTHER, "n", "soon")),
    ("add bad name", lambda a: a.add_variant(FLAG, "no good", "x")),
    ("create boolean flag", lambda a: a.create_flag("plain.flag")),
    ("add to boolean", lambda a: a.add_variant("plain.flag", "x", True)),
    ("add to unknown flag", lambda a: a.add_variant("no.such", "x", True)),
    (
        "set on variant and split",
        lambda a: a.set_state(
            "production",
            FLAG,
            enabled=True,
            on_variant="gold",
            split=[{"variant": "gold", "weight": 200}, {"variant": "silver", "weight": 800}],
        ),
    ),
    ("pin a tenant", lambda a: a.set_state("beta", FLAG, tenant_variants={"acme": "silver"})),
    ("split not 1000", lambda a: a.set_state("beta", FLAG, split={"gold": 1, "silver": 2})),
    ("undeclared on variant", lambda a: a.set_state("beta", FLAG, on_variant="lead")),
    ("rename", lambda a: a.rename_variant(FLAG, "gold", "gilded")),
    ("rename unknown", lambda a: a.rename_variant(FLAG, "nope", "x")),
    ("rename onto another", lambda a: a.rename_variant(FLAG, "gilded", "silver")),
    ("set value", lambda a: a.set_variant_value(FLAG, "gilded", "G")),
    ("remove in use", lambda a: a.remove_variant(FLAG, "gilded")),
    ("remove unknown", lambda a: a.remove_variant(FLAG, "nope")),
    ("add spare", lambda a: a.add_variant(FLAG, "spare", "x")),
    ("remove spare", lambda a: a.remove_variant(FLAG, "spare")),
    ("initial off variant", lambda a: a.update_flag(FLAG, off_variant="silver")),
    ("initial undeclared", lambda a: a.update_flag(FLAG, on_variant="lead")),
    ("initial on boolean", lambda a: a.update_flag("plain.flag", off_variant="off")),
    ("kill keeps variants", lambda a: a.kill("production", FLAG, reason="drill")),
    ("get", lambda a: a.get_flag(FLAG)),
    ("history", lambda a: a.history(flag=FLAG)),
]

SCENARIOS = {
    "flags": FLAGS,
    "states": STATES,
    "kills": KILLS,
    "tokens_and_environments": TOKENS_AND_ENVIRONMENTS,
    "plans": PLANS,
    "history": HISTORY,
    "typed": TYPED,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_conformance__scenario_over_http_and_database__same_answers_and_history(
    pair: Any, name: str
) -> None:
    """Every step answers alike (or fails alike) both ways, and the history tables match."""
    # When
    mismatches = []
    kinds = set()
    for label, step in SCENARIOS[name]:
        over_http = outcome(step, pair.http)
        direct = outcome(step, pair.direct)
        kinds.add(direct[0])
        if over_http != direct:
            mismatches.append(f"{label}:\n  http:     {over_http}\n  database: {direct}")
    # Then
    assert mismatches == [], "\n".join(mismatches)
    assert kinds == {"ok", "error"}  # each scenario has answers and errors to compare
    assert history_rows(pair.http_store) == history_rows(pair.direct_store)
