"""Issue #14, integer bounds on the admin side: numbers past what a column or a
duration holds get a 4xx naming the field, never a 500, and the server goes on.

Through a real server. (``tests/api/test_schemathesis.py`` sends the boundary values to
every numeric parameter and body field; this is the attack as a client would send it.)
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from security.admin_server import AdminServer, error_field

FLAG = "checkout.v2"


@pytest.fixture
def server(sqlite_url: str) -> Iterator[AdminServer]:
    with AdminServer(sqlite_url) as running:
        running.flag(FLAG)
        yield running


def _cursor(n: int) -> str:
    return base64.urlsafe_b64encode(f"h:{n}".encode()).decode().rstrip("=")


def _raw(value: Any) -> dict[str, Any]:
    """A JSON body as a client may send it (NaN and Infinity included)."""
    return {"content": json.dumps(value), "headers": {"content-type": "application/json"}}


CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/admin/history", {"params": {"cursor": _cursor(2**63)}}, "cursor"),
    ("GET", "/admin/history", {"params": {"cursor": _cursor(2**64)}}, "cursor"),
    ("GET", "/admin/history", {"params": {"limit": str(2**64)}}, "limit"),
    ("GET", "/admin/history", {"params": {"since": "99999999999999999999d"}}, "since"),
    ("GET", f"/admin/plans/{2**64}", {}, "plan_id"),
    ("POST", f"/admin/plans/{2**63}/pause", {}, "plan_id"),
    (
        "PATCH",
        f"/admin/flags/{FLAG}/environments/production",
        _raw({"rollout": 2**64}),
        "rollout",
    ),
    (
        "PATCH",
        f"/admin/flags/{FLAG}/environments/production",
        {"json": {"enabled": False}, "headers": {"If-Match": f'"{2**64}"'}},
        "If-Match",
    ),
    (
        "POST",
        f"/admin/flags/{FLAG}/kill",
        {"params": {"wait": "1e308s"}, "json": {"reason": "r"}},
        "wait",
    ),
    (
        "POST",
        f"/admin/flags/{FLAG}/plans",
        _raw({"environment": "production", "stages": [{"rollout": 10, "hold": 1e308}]}),
        "stages",
    ),
    (
        "POST",
        f"/admin/flags/{FLAG}/plans",
        _raw(
            {
                "environment": "production",
                "stages": [{"rollout": 10, "hold": "1m"}],
                "guard": {"metric": f"{FLAG}.errors", "threshold": float("nan")},
            }
        ),
        "guard",
    ),
    (
        "POST",
        f"/admin/flags/{FLAG}/schedules",
        _raw({"environment": "production", "at": 2**64, "change": {"rollout": 5}}),
        "at",
    ),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "field"), CASES, ids=lambda c: str(c)[:40])
def test_boundary_number__admin_request__4xx_naming_the_field(
    server: AdminServer, method: str, path: str, kwargs: dict[str, Any], field: str
) -> None:
    """The attack: an oversized, negative or non-finite number; the answer names the field."""
    kwargs = {**kwargs, "headers": dict(kwargs.get("headers", {}))}
    response = server.request(method, path, server.admin, **kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert (error_field(response) or "").split(".")[0] == field, response.text
    # And the server goes on: the flag is as it was, and the next request is served.
    assert server.request("GET", "/healthz").status_code == 200
    states = server.store.get_flag(FLAG).states
    assert states["production"].rollout == 100 and not states["production"].killed
