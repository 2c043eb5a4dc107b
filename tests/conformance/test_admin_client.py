"""``flags.admin_client.AdminClient``: requests it sends and how answers become errors.

Driven by ``httpx.MockTransport`` (no network); the conformance suite runs it
against a real server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from flags import errors
from flags.admin_client import AdminClient, error_from_answer

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler) -> AdminClient:
    return AdminClient("http://flagrail.test/", "frl_t", transport=httpx.MockTransport(handler))


def answer(status: int, body: Any) -> Handler:
    return lambda _request: httpx.Response(status, json=body)


def problem(code: str, message: str = "m", field: str | None = None, **extra: Any) -> Any:
    return {"error": {"code": code, "message": message, "field": field}, **extra}


class TestRequests:
    def test_kill__one_environment__posts_reason_and_list_with_token_and_actor(self) -> None:
        """``kill(env, flag, reason=...)`` posts the API's body to the kill route."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"flag": "a.b", "environments": {}, "changed": []})

        transport = httpx.MockTransport(handler)
        with AdminClient(
            "http://flagrail.test", "frl_t", actor="guard:h:1", transport=transport
        ) as admin:
            admin.kill("production", "a.b", reason="corrupt reads", wait="2s")
        (request,) = seen
        assert (request.method, request.url.path) == ("POST", "/admin/flags/a.b/kill")
        assert request.url.params["wait"] == "2s"
        assert json.loads(request.content) == {
            "reason": "corrupt reads",
            "environments": ["production"],
        }
        assert request.headers["Authorization"] == "Bearer frl_t"
        assert request.headers["X-Flagrail-Actor"] == "guard:h:1"

    def test_set_state__if_version__sends_if_match_and_leaves_out_none(self) -> None:
        """The change's fields are the body; ``if_version`` is an ``If-Match`` header."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={})

        admin = client(handler)
        admin.set_state("beta", "a.b", rollout=5, if_version=3)
        admin.history(flag=None, environment="beta", limit=None)
        assert seen[0].headers["If-Match"] == '"3"'
        assert json.loads(seen[0].content) == {"rollout": 5}
        assert (seen[1].url.path, dict(seen[1].url.params)) == (
            "/admin/history",
            {"environment": "beta"},
        )

    @pytest.mark.parametrize("key", ["../tokens", "a/b", "A.B", ""])
    def test_flag_path__malformed_key__validation_error_before_sending(self, key: str) -> None:
        """No malformed key reaches a URL."""

        def handler(request: httpx.Request) -> httpx.Response:
            raise AssertionError(f"sent {request.url}")

        with pytest.raises(errors.ValidationError) as info:
            client(handler).get_flag(key)
        assert info.value.field == "key"


class TestErrors:
    @pytest.mark.parametrize(
        ("status", "code", "expected"),
        [
            (404, "flag_not_found", errors.FlagNotFoundError),
            (404, "environment_not_found", errors.EnvironmentNotFoundError),
            (404, "not_found", errors.NotFoundError),
            (409, "already_exists", errors.AlreadyExistsError),
            (409, "plan_state", errors.PlanStateError),
            (422, "validation_error", errors.ValidationError),
            (401, "unauthenticated", errors.UnauthenticatedError),
            (403, "forbidden", errors.ForbiddenError),
            (503, "store_unavailable", errors.StoreUnavailableError),
            (405, "method_not_allowed", errors.ValidationError),
            (418, "teapot", errors.ValidationError),
            (429, "error", errors.ServerUnavailableError),
            (500, "internal_error", errors.ServerUnavailableError),
        ],
    )
    def test_error_answer__code__named_exception(
        self, status: int, code: str, expected: type[errors.FlagrailError]
    ) -> None:
        """The server's error code picks the class; the message names status and code."""
        with pytest.raises(expected) as info:
            client(answer(status, problem(code, "went wrong", "key"))).get_flag("a.b")
        assert type(info.value) is expected
        assert str(info.value) == f"{status} {code}: went wrong"
        assert info.value.field == "key"

    def test_version_conflict__answer__carries_current(self) -> None:
        """A 409 version_conflict keeps the state the server sent."""
        body = problem("version_conflict", "at version 7", "If-Match", current={"version": 7})
        with pytest.raises(errors.VersionConflictError) as info:
            client(answer(409, body)).set_state("beta", "a.b", rollout=1, if_version=2)
        assert info.value.current == {"version": 7}

    @pytest.mark.parametrize(
        "handler",
        [
            lambda r: httpx.Response(502, text="<html>bad gateway</html>"),
            lambda r: httpx.Response(200, text="not json"),
            lambda r: httpx.Response(200, json=[1, 2]),
        ],
        ids=["proxy error page", "not json", "not an object"],
    )
    def test_answer__not_the_api__server_unavailable(self, handler: Handler) -> None:
        with pytest.raises(errors.ServerUnavailableError):
            client(handler).list_flags()

    def test_transport__connect_error__server_unavailable_naming_url(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        with pytest.raises(errors.ServerUnavailableError) as info:
            client(handler).list_flags()
        assert "http://flagrail.test" in str(info.value)
        assert isinstance(info.value, ConnectionError)

    def test_transport__timeout__server_unavailable(self) -> None:
        def handler(request: httpx.Request) -> httpx.Response:
            raise httpx.ReadTimeout("slow", request=request)

        with pytest.raises(errors.ServerUnavailableError, match="did not answer in time"):
            client(handler).kill(None, "a.b", reason="r")

    def test_error_from_answer__body_not_the_error_shape__fallback_message(self) -> None:
        exc = error_from_answer(404, ["odd"], "Not Found")
        assert type(exc) is errors.NotFoundError
        assert str(exc) == "404 error: Not Found"


def test_admin_client__import__no_server_dependencies() -> None:
    """The lean SDK install has the client: importing it loads no server package."""
    code = (
        "import sys, flags.admin_client; "
        "print(sorted(m for m in ('sqlalchemy', 'fastapi', 'typer', 'pydantic', 'uvicorn') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
