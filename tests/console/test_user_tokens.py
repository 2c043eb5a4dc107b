"""Tokens issued to a console user (``--user`` / body field ``user``), the principal of a
user, and the history rows of user changes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.cli import main as cli_main
from api.service import Principal
from flags.errors import ConflictError, ForbiddenError
from flags.model import Action, Role
from flags.store.sql import SqlFlagStore
from flags.store.users import UserNotFoundError, UserStore

from .conftest import FAST_HASHER, PASSWORD, login


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def root(console_app: TestClient) -> dict[str, str]:
    """An unscoped admin token's headers."""
    _info, secret = console_app.app.state.store.create_token(  # type: ignore[attr-defined]
        "root", "admin", None, actor="test"
    )
    return _bearer(secret)


def _history(client: TestClient, headers: dict[str, str], action: str) -> list[dict[str, Any]]:
    answer = client.get("/admin/history", params={"action": action}, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]  # type: ignore[no-any-return]


class TestUserTokens:
    def test_token_of_a_user__disabled_user__401_until_enabled(
        self, console_app: TestClient, root: dict[str, str]
    ) -> None:
        """When ed is disabled his token answers 401; enabled again, it works."""
        made = console_app.post(
            "/admin/tokens",
            json={"name": "ed-script", "role": "editor", "user": "ed"},
            headers=root,
        )
        assert made.status_code == 201, made.text
        assert made.json()["user"] == "ed"
        ed = _bearer(made.json()["token"])
        assert console_app.get("/admin/flags", headers=ed).status_code == 200
        listed = console_app.get("/admin/tokens", headers=root).json()["items"]
        assert [t["user"] for t in listed if t["name"] == "ed-script"] == ["ed"]

        assert console_app.post("/admin/users/ed/disable", headers=root).status_code == 200
        refused = console_app.get("/admin/flags", headers=ed)
        assert refused.status_code == 401 and "Authorization" in refused.text
        assert console_app.post("/admin/users/ed/enable", headers=root).json()["disabled"] is False
        assert console_app.get("/admin/flags", headers=ed).status_code == 200

    @pytest.mark.parametrize(
        ("body", "status", "field"),
        [
            ({"user": "nobody", "role": "reader"}, 404, "user"),
            ({"user": "rita", "role": "editor"}, 403, "role"),  # rita is a reader
            ({"user": "ed", "role": "admin"}, 403, "role"),
            ({"user": "", "role": "reader"}, 422, "user"),
        ],
    )
    def test_token_of_a_user__beyond_the_user_or_unknown__refused_naming_the_field(
        self,
        console_app: TestClient,
        root: dict[str, str],
        body: dict[str, str],
        status: int,
        field: str,
    ) -> None:
        answer = console_app.post("/admin/tokens", json={"name": "t", **body}, headers=root)
        assert answer.status_code == status, answer.text
        assert field in answer.text

    def test_token_of_a_disabled_user__conflict(
        self, console_app: TestClient, root: dict[str, str]
    ) -> None:
        console_app.post("/admin/users/olga/disable", headers=root)
        answer = console_app.post(
            "/admin/tokens", json={"name": "t", "role": "reader", "user": "olga"}, headers=root
        )
        assert answer.status_code == 409 and "user" in answer.text

    def test_token_of_another_user__scoped_admin__403(
        self, console_app: TestClient, root: dict[str, str]
    ) -> None:
        scoped = console_app.post(
            "/admin/tokens",
            json={"name": "stage-admin", "role": "admin", "environments": ["staging"]},
            headers=root,
        ).json()["token"]
        answer = console_app.post(
            "/admin/tokens",
            json={"name": "t", "role": "reader", "environments": ["staging"], "user": "rita"},
            headers=_bearer(scoped),
        )
        assert answer.status_code == 403 and "user" in answer.text

    def test_console_token_form__issues_to_a_user(self, console_app: TestClient) -> None:
        csrf = login(console_app, "alice")
        page = console_app.post(
            "/console/admin/tokens",
            data={"csrf": csrf, "name": "rita-bot", "role": "reader", "user": "rita"},
        )
        assert page.status_code == 201, page.text
        tokens = console_app.app.state.store.list_tokens()  # type: ignore[attr-defined]
        assert [t.user for t in tokens if t.name == "rita-bot"] == ["rita"]


class TestUserHistory:
    def test_create_disable_enable__history_rows_by_the_actor__admins_only(
        self, console_app: TestClient, root: dict[str, str]
    ) -> None:
        body = {"name": "zoe", "password": PASSWORD, "role": "reader"}
        assert console_app.post("/admin/users", json=body, headers=root).status_code == 201
        console_app.post("/admin/users/zoe/disable", headers=root)
        console_app.post("/admin/users/zoe/disable", headers=root)  # no change, no row
        console_app.post("/admin/users/zoe/enable", headers=root)
        created = _history(console_app, root, Action.USER_CREATE.value)
        assert created[0]["after"]["name"] == "zoe"
        assert created[0]["actor"] == "root" and "password" not in str(created[0]["after"])
        disabled = _history(console_app, root, Action.USER_DISABLE.value)
        assert len(disabled) == 1
        assert (disabled[0]["before"]["disabled"], disabled[0]["after"]["disabled"]) == (
            False,
            True,
        )
        assert len(_history(console_app, root, Action.USER_ENABLE.value)) == 1

        _i, reader = console_app.app.state.store.create_token(  # type: ignore[attr-defined]
            "reader", "reader", None, actor="test"
        )
        assert _history(console_app, _bearer(reader), Action.USER_CREATE.value) == []

    def test_console_pages__user_rows_by_user_actor__on_the_history_page(
        self, console_app: TestClient
    ) -> None:
        csrf = login(console_app, "alice")
        console_app.post("/console/admin/users/rita/disable", data={"csrf": csrf})
        console_app.post("/console/admin/users/rita/enable", data={"csrf": csrf})
        page = console_app.get("/console/history", params={"action": "user.enable"})
        assert page.status_code == 200
        assert page.text.count('data-testid="history-row"') == 1
        assert "user:alice" in page.text

    def test_create_user__refused__no_history_row(self, database_url: str) -> None:
        """A failed create (the name is taken) rolls its history row back with it."""
        store = SqlFlagStore(database_url)
        try:
            users = UserStore(store.engine, hasher=FAST_HASHER)
            users.create_user("amy", PASSWORD, "reader", actor="test")
            with pytest.raises(Exception, match="already exists"):
                users.create_user("amy", PASSWORD, "admin", actor="test")
            with store.engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT count(*) FROM history WHERE action = 'user.create'"
                ).scalar()
            assert rows == 1
        finally:
            store.close()


class TestStoreUserTokens:
    def test_authenticate__user_disabled_or_scoped__per_user_rules(self, database_url: str) -> None:
        """On SQLite and PostgreSQL: the join on the user decides, the scope is checked."""
        store = SqlFlagStore(database_url)
        try:
            if "staging" not in {e.name for e in store.list_environments()}:
                store.create_environment("staging", actor="test")
            users = UserStore(store.engine, hasher=FAST_HASHER)
            users.create_user("sam", PASSWORD, "operator", ["staging"], actor="test")
            info, secret = store.create_token(
                "sam-cli", "guard", ["staging"], actor="t", user="sam"
            )
            assert store.authenticate(secret) == info and info.user == "sam"
            with pytest.raises(ForbiddenError) as beyond:
                store.create_token("x", "operator", None, actor="t", user="sam")
            assert beyond.value.field == "environments"
            with pytest.raises(UserNotFoundError):
                store.create_token("x", "reader", ["staging"], actor="t", user="nope")
            users.set_disabled("sam", actor="test")
            assert store.authenticate(secret) is None
            with pytest.raises(ConflictError):
                store.create_token("x", "reader", ["staging"], actor="t", user="sam")
        finally:
            store.close()


def test_principal_from_user__role_scope_actor_and_user() -> None:
    from datetime import UTC, datetime

    from flags.store.users import User

    user = User("kim", Role.EDITOR, ("staging",), datetime.now(UTC))
    principal = Principal.from_user(user)
    assert (principal.user, principal.role, principal.environments) == (
        "kim",
        Role.EDITOR,
        ("staging",),
    )
    assert principal.token_id is None and str(principal.actor) == "user:kim"


def test_cli__token_create_for_user__listed_with_user__user_enable(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``flagrail token create --user``, ``token list``, ``user enable`` (in process)."""

    def flagrail(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            cli_main([*args, "--database-url", sqlite_url])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    store = SqlFlagStore(sqlite_url)
    try:
        UserStore(store.engine, hasher=FAST_HASHER).create_user(
            "alice", PASSWORD, "editor", actor="test"
        )
    finally:
        store.close()
    code, out, err = flagrail(
        "token", "create", "--name", "dep", "--role", "editor", "--user", "alice"
    )
    assert code == 0 and out.startswith("frl_"), err
    assert '"user": "alice"' in flagrail("token", "list", "--json")[1]
    code, _out, err = flagrail(
        "token", "create", "--name", "x", "--role", "admin", "--user", "alice"
    )
    assert code == 1 and "role" in err and "Traceback" not in err
    assert flagrail("user", "disable", "--name", "alice")[0] == 0
    code, out, _err = flagrail("user", "enable", "--name", "alice")
    assert code == 0 and "enabled user alice" in out
