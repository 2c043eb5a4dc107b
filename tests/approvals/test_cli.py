"""``flagrail cr ...`` on the database (``--database-url``): the same ApprovalService as
``/admin/change-requests``; the CLI is a person of its own (``cli:<os user>``)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from api.cli.change_requests import app
from api.service.approvals import ApprovalService
from api.service.principal import Principal
from flags.errors import SelfApprovalError
from flags.model import Role, StateChange
from flags.store.change_requests import ChangeKind
from flags.store.sql import SqlFlagStore, cli_actor
from tests.approvals.people import ENV, FLAG, token

runner = CliRunner()


def cr(url: str, *args: str) -> str:
    result = runner.invoke(app, [*args, "--database-url", url])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_cr__list_show_approve__applies(
    gated: ApprovalService, flags: SqlFlagStore, database_url: str
) -> None:
    """A token's request is listed, shown with its diff, and the CLI's approval applies it."""
    outcome = gated.submit(
        token("t1", Role.EDITOR), ChangeKind.STATE, FLAG, ENV, StateChange(rollout=40)
    )
    assert outcome.request is not None
    number = str(outcome.request.id)
    [item] = json.loads(cr(database_url, "list", "--json"))["items"]
    assert item["id"] == outcome.request.id and item["status"] == "pending"
    shown = cr(database_url, "show", number)
    assert f"change request {number}: pending" in shown
    assert "raises  rollout: 10 -> 40" in shown
    assert "applied" in cr(database_url, "approve", number)
    assert flags.get_state(FLAG, ENV).rollout == 40
    assert json.loads(cr(database_url, "list", "--json"))["items"] == []


def test_cr__approve_own_request__refused_one_error(
    gated: ApprovalService, flags: SqlFlagStore, database_url: str
) -> None:
    """The CLI cannot approve what the CLI (same OS user) asked for."""
    me = Principal.break_glass(cli_actor())
    outcome = gated.submit(me, ChangeKind.STATE, FLAG, ENV, StateChange(rollout=40))
    assert outcome.request is not None
    result = runner.invoke(
        app, ["approve", str(outcome.request.id), "--database-url", database_url]
    )
    assert result.exit_code != 0 and isinstance(result.exception, SelfApprovalError)
    assert flags.get_state(FLAG, ENV).rollout == 10
    assert "cancelled" in cr(database_url, "cancel", str(outcome.request.id), "--reason", "oops")


def test_cr__reviews_and_ack(gated: ApprovalService, admin: Principal, database_url: str) -> None:
    """A break-glass review item is listed until the CLI (another person) acknowledges it."""
    outcome = gated.submit(
        admin, ChangeKind.STATE, FLAG, ENV, StateChange(rollout=90), break_glass="outage"
    )
    assert outcome.review is not None
    [item] = json.loads(cr(database_url, "reviews", "--json"))["items"]
    assert item["reason"] == "outage"
    assert "acknowledged by" in cr(database_url, "ack", str(item["id"]))
    assert json.loads(cr(database_url, "reviews", "--json"))["items"] == []
    assert len(json.loads(cr(database_url, "reviews", "--all", "--json"))["items"]) == 1


def test_cr__reason__only_where_it_is_recorded(database_url: str) -> None:
    """``--reason`` exists on reject and cancel, which record it; approve, apply and show
    refuse it rather than accept and drop it."""
    for verb in ("approve", "apply", "show"):
        result = runner.invoke(app, [verb, "1", "--reason", "x", "--database-url", database_url])
        assert result.exit_code == 2 and "--reason" in result.output, (verb, result.output)
    for verb in ("reject", "cancel"):
        assert "--reason" in runner.invoke(app, [verb, "--help"]).output
