"""``api.service``: the role and scope checks every front end goes through, once.

Runs ``AdminService`` on a real SQLite store; the HTTP auth matrix
(``test_auth_matrix.py``) checks the same table through the routes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from api.service import PERMISSIONS, AdminService, Operation, Principal
from api.service.commands import (
    CreateFlag,
    CreateToken,
    EditVariant,
    FlagFilter,
    Kill,
    MovePlan,
    PlanMove,
    SetState,
    UpdateFlag,
    VariantEdit,
)
from flags.errors import FlagrailError, ForbiddenError
from flags.history import Actor, HistoryQuery
from flags.model import Role, StateChange, TokenInfo
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore
from flags.store.telemetry import TelemetryStore

FLAG = "a.b"
Call = Callable[[AdminService, Principal], Any]

# Every public operation of the service, with the operation it needs and a call.
CALLS: dict[str, tuple[Operation, Call]] = {
    "list_environments": (Operation.READ, lambda s, p: s.list_environments(p)),
    "create_environment": (
        Operation.CREATE_ENVIRONMENT,
        lambda s, p: s.create_environment(p, "qa"),
    ),
    "list_flags": (Operation.READ, lambda s, p: s.list_flags(p, FlagFilter())),
    "flags_page": (Operation.READ, lambda s, p: s.flags_page(p, FlagFilter())),
    "recent_plans": (Operation.READ, lambda s, p: s.recent_plans(p)),
    "counter_totals": (
        Operation.READ,
        lambda s, p: s.counter_totals(p, FLAG, "beta", s.store.list_flags()[0].flag.created_at),
    ),
    "get_flag": (Operation.READ, lambda s, p: s.get_flag(p, FLAG)),
    "create_flag": (Operation.EDIT_FLAG, lambda s, p: s.create_flag(p, CreateFlag("c.d"))),
    "update_flag": (
        Operation.EDIT_FLAG,
        lambda s, p: s.update_flag(p, UpdateFlag(FLAG, {"owner": "x"})),
    ),
    "archive_flag": (Operation.EDIT_FLAG, lambda s, p: s.archive_flag(p, FLAG)),
    "edit_variant": (  # typed flags (#19)
        Operation.EDIT_FLAG,
        lambda s, p: s.edit_variant(p, EditVariant(FLAG, "v", VariantEdit.ADD, value="x")),
    ),
    "set_state": (
        Operation.SET_STATE,
        lambda s, p: s.set_state(p, SetState(FLAG, "beta", StateChange(enabled=True))),
    ),
    "kill": (Operation.KILL, lambda s, p: s.kill(p, Kill(FLAG, "r", ("beta",)))),
    "unkill": (Operation.UNKILL, lambda s, p: s.unkill(p, Kill(FLAG, "r", ("beta",)))),
    "history": (Operation.READ, lambda s, p: s.history(p, HistoryQuery())),
    "flag_history": (Operation.READ, lambda s, p: s.flag_history(p, FLAG, HistoryQuery())),
    "create_token": (
        Operation.MANAGE_TOKENS,
        lambda s, p: s.create_token(p, CreateToken("t", "reader", ("beta",))),
    ),
    "list_tokens": (Operation.MANAGE_TOKENS, lambda s, p: s.list_tokens(p)),
    "revoke_token": (Operation.MANAGE_TOKENS, lambda s, p: s.revoke_token(p, "nope")),
    "create_plan": (
        Operation.PLAN,
        lambda s, p: s.create_plan(p, FLAG, {"environment": "beta", "stages": [{"rollout": 5}]}),
    ),
    "create_schedule": (
        Operation.PLAN,
        lambda s, p: s.create_schedule(
            p, FLAG, {"environment": "beta", "at": "2999-01-01T00:00:00Z", "change": {"rollout": 1}}
        ),
    ),
    "list_plans": (Operation.READ, lambda s, p: s.list_plans(p, FLAG)),
    "get_plan": (Operation.READ, lambda s, p: s.get_plan(p, 1)),
    "move_plan": (
        Operation.STOP_PLAN,
        lambda s, p: s.move_plan(p, MovePlan(1, PlanMove.PAUSE)),
    ),
    "unused": (Operation.READ, lambda s, p: s.unused(p, s.store.list_flags()[0].flag.created_at)),
    "clients": (Operation.READ, lambda s, p: s.clients(p, "beta")),
}
NOT_OPERATIONS = {"confirm_kill"}  # runs after a kill the caller was allowed to make


class FakeInstances:
    def live(self, environment: str) -> list[dict[str, Any]]:
        return []

    def wait_applied(self, targets: dict[str, int], timeout: float) -> Any:
        raise AssertionError("not called here")


@pytest.fixture
def service(sqlite_url: str) -> Iterator[AdminService]:
    store = SqlFlagStore(sqlite_url)
    store.create_flag(FLAG, actor="setup")
    try:
        yield AdminService(
            store,
            plans=PlanStore(store),
            telemetry=TelemetryStore(store.engine),
            instances=FakeInstances(),
        )
    finally:
        store.close()


def principal(role: Role, environments: tuple[str, ...] | None = None) -> Principal:
    return Principal("id", role.value, role, environments)


def test_calls__cover_every_public_operation() -> None:
    """No public method of ``AdminService`` is left out of the role checks below."""
    public = {
        name
        for name, _ in inspect.getmembers(AdminService, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public - NOT_OPERATIONS == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("role", list(Role))
def test_operation__role__refused_unless_the_table_allows_it(
    service: AdminService, name: str, role: Role
) -> None:
    """Each operation refuses (``ForbiddenError``) exactly the roles PERMISSIONS leaves out."""
    operation, call = CALLS[name]
    # When
    try:
        call(service, principal(role))
        refused = False
    except ForbiddenError:
        refused = True
    except FlagrailError:  # allowed, then failed on the dummy input: not a refusal
        refused = False
    # Then
    assert refused is (role not in PERMISSIONS[operation])


def test_permissions__client_role__no_admin_operation() -> None:
    assert all(Role.CLIENT not in roles for roles in PERMISSIONS.values())


def test_allow__role_below__forbidden_naming_the_role_needed() -> None:
    with pytest.raises(ForbiddenError, match="needs 'editor' or above"):
        principal(Role.OPERATOR).allow(Operation.SET_STATE)


def test_kill__scoped_operator_without_environments__only_its_own(
    service: AdminService,
) -> None:
    """A kill naming no environment reaches every environment of the token, no more."""
    result = service.kill(principal(Role.OPERATOR, ("beta", "staging")), Kill(FLAG, "r"))
    assert sorted(result.changed) == ["beta", "staging"]
    assert not service.store.get_flag(FLAG).states["production"].killed


@pytest.mark.parametrize(
    "call",
    [
        lambda s, p: s.set_state(p, SetState(FLAG, "production", StateChange(enabled=True))),
        lambda s, p: s.kill(p, Kill(FLAG, "r", ("production",))),
        lambda s, p: s.history(p, HistoryQuery(environment="production")),
        lambda s, p: s.archive_flag(p, FLAG),
        lambda s, p: s.create_environment(p, "qa"),
        lambda s, p: s.create_token(p, CreateToken("t", "reader", None)),
    ],
    ids=["set", "kill", "history", "archive", "environment", "unscoped token"],
)
def test_scoped_principal__outside_its_environments__forbidden(
    service: AdminService, call: Call
) -> None:
    """An admin scoped to beta acts only within beta."""
    with pytest.raises(ForbiddenError):
        call(service, principal(Role.ADMIN, ("beta",)))


def test_check_flag__patterns__only_matching_flags(service: AdminService) -> None:
    """A principal limited to flag patterns may act on those flags only."""
    limited = Principal("id", "auth-guard", Role.GUARD, ("beta",), ("auth.cache.*",))
    with pytest.raises(ForbiddenError, match=r"may not act on flag 'a\.b'"):
        service.kill(limited, Kill(FLAG, "r"))
    limited.check_flag("auth.cache.l2")


def test_claimed_actor__change__recorded_under_it_with_the_token(service: AdminService) -> None:
    """A guard's claimed actor names its change; the token behind it is recorded too."""
    guard = Principal("tok1", "auth-guard", Role.GUARD, None, None, "guard:web-1:42")
    service.kill(guard, Kill(FLAG, "corrupt reads", ("beta",)))
    (row,) = service.store.list_history(HistoryQuery(action="kill")).items
    assert (row.actor, row.claimed_actor) == ("guard:web-1:42", "guard:web-1:42")
    assert (row.token_id, row.token_name) == ("tok1", "auth-guard")


def test_token__change__history_names_the_token(service: AdminService) -> None:
    """Without a claim the actor is the token's name, and its id is recorded."""
    editor = Principal("tok2", "deployer", Role.EDITOR)
    service.kill(editor, Kill(FLAG, "r", ("beta",)))
    (row,) = service.store.list_history(HistoryQuery(action="kill")).items
    assert (row.actor, row.token_id, row.token_name, row.claimed_actor) == (
        "deployer",
        "tok2",
        "deployer",
        None,
    )


def test_from_token__claim_below_guard__refused() -> None:
    """Only a guard token may claim an actor: any other role hears 403 naming the header."""
    for role in (Role.READER, Role.OPERATOR, Role.EDITOR, Role.ADMIN):
        info = TokenInfo("t", "n", role, None, datetime.now(UTC))
        with pytest.raises(ForbiddenError) as caught:
            Principal.from_token(info, claimed_actor="guard:x:1")
        assert caught.value.field == "X-Flagrail-Actor"
    guard = TokenInfo("t", "g", Role.GUARD, ("beta",), datetime.now(UTC), flags=("a.*",))
    p = Principal.from_token(guard, claimed_actor="guard:x:1")
    assert (p.flag_patterns, p.actor.claimed, p.actor.token_name) == (("a.*",), "guard:x:1", "g")


def test_guard__every_operation_but_kill__refused(service: AdminService) -> None:
    """A guard token may kill and do nothing else: no unkill, set, plan or read."""
    guard = Principal("g", "guard", Role.GUARD)
    assert {op for op in Operation if guard.may(op)} == {Operation.KILL}
    service.kill(guard, Kill(FLAG, "r", ("beta",)))
    with pytest.raises(ForbiddenError, match="needs 'operator' or above"):
        service.unkill(guard, Kill(FLAG, "r", ("beta",)))
    with pytest.raises(ForbiddenError):
        service.history(guard, HistoryQuery())


def test_update_flag__scoped_editor__refused(service: AdminService) -> None:
    """Flag-level metadata is shared by every environment: a scoped editor may not change it."""
    scoped = Principal("e", "beta-editor", Role.EDITOR, ("beta",))
    with pytest.raises(ForbiddenError, match="every environment"):
        service.update_flag(scoped, UpdateFlag(FLAG, {"description": "x"}))


def test_history__below_admin__token_rows_hidden(service: AdminService) -> None:
    service.create_token(principal(Role.ADMIN), CreateToken("t", "reader"))
    seen = {
        role: [e.action for e in service.history(principal(role), HistoryQuery()).items]
        for role in (Role.EDITOR, Role.ADMIN)
    }
    assert "token.create" not in seen[Role.EDITOR]
    assert "token.create" in seen[Role.ADMIN]


def test_break_glass__principal__unscoped_admin_named_by_actor() -> None:
    p = Principal.break_glass("cli:alice")
    assert (p.role, p.scope, p.actor, p.token_id) == (Role.ADMIN, None, Actor("cli:alice"), None)


def test_history__scoped_admin__token_rows_of_tokens_within_scope(service: AdminService) -> None:
    """A scoped admin sees token rows only of tokens within its environments."""
    root = principal(Role.ADMIN)
    service.create_token(root, CreateToken("everywhere", "reader"))
    service.create_token(root, CreateToken("beta-sdk", "client", ("beta",)))
    scoped = Principal("s", "beta-admin", Role.ADMIN, ("beta",))
    rows = service.history(scoped, HistoryQuery(action="token.create")).items
    assert [r.after["name"] for r in rows] == ["beta-sdk"]
    assert [t.name for t in service.list_tokens(scoped)] == ["beta-sdk"]
