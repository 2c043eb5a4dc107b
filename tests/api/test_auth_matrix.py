"""The full auth matrix: every admin route x role x environment scope -> 401 / 403 / 2xx.

Roles: reader (GET only) < operator (+ kill, unkill) < editor (+ flags and states) <
admin (+ tokens and environments); ``client`` tokens reach no admin route. Scopes:
a token for every environment, a token scoped to the environment the request
targets, and one scoped to another environment.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from api.routes import environments, flags, health, history, tokens

TARGET = "production"  # the environment each environment-bound request touches
OTHER = "beta"

LADDER = ["client", "reader", "operator", "editor", "admin"]
RANK = {role: i for i, role in enumerate(LADDER)}
# ``guard`` stands apart from the ladder: it may kill, nothing else.
ROLES = [*LADDER, "guard"]
GUARD_ROUTES = {("POST", "/admin/flags/{key}/kill")}
PUBLIC, ANY, ENV, UNSCOPED = "public", "any", "env", "unscoped"


@dataclass(frozen=True)
class Route:
    """One request shape: the least role it needs and how environment scope applies.

    ``scope``: ``public`` (no token), ``any`` (scoped tokens allowed; answers filtered),
    ``env`` (the token must cover TARGET), ``unscoped`` (only tokens for every environment).
    """

    method: str
    template: str
    role: str
    scope: str
    success: int
    build: Callable[[Any, int], tuple[str, Any]]  # (api, n) -> (path, json body)


def _flag(api: Any, n: int) -> str:
    key = f"m.flag{n}"
    api.store.create_flag(key, actor="setup")
    return key


def _typed_flag(api: Any, n: int) -> str:
    """A string flag with variants a (its off and on variant) and b (unused)."""
    key = f"m.typed{n}"
    variants = [{"name": "a", "value": "x"}, {"name": "b", "value": "y"}]
    api.store.create_flag(key, type="string", variants=variants, off_variant="a", actor="setup")
    return key


def _token_in_target(api: Any, _n: int) -> str:
    info, _secret = api.store.create_token("target", "reader", [TARGET], actor="setup")
    return str(info.id)


ROUTES = [
    Route("GET", "/healthz", "", PUBLIC, 200, lambda a, n: ("/healthz", None)),
    Route("GET", "/metrics", "reader", ANY, 200, lambda a, n: ("/metrics", None)),
    Route(
        "GET", "/admin/environments", "reader", ANY, 200, lambda a, n: ("/admin/environments", None)
    ),
    Route(
        "POST",
        "/admin/environments",
        "admin",
        UNSCOPED,
        201,
        lambda a, n: ("/admin/environments", {"name": f"env-{n}"}),
    ),
    Route("GET", "/admin/flags", "reader", ANY, 200, lambda a, n: ("/admin/flags", None)),
    Route(
        "POST",
        "/admin/flags",
        "editor",
        ANY,
        201,
        lambda a, n: ("/admin/flags", {"key": f"new.f{n}"}),
    ),
    Route(
        "GET",
        "/admin/flags/{key}",
        "reader",
        ANY,
        200,
        lambda a, n: (f"/admin/flags/{_flag(a, n)}", None),
    ),
    Route(
        "PATCH",
        "/admin/flags/{key}",
        "editor",
        UNSCOPED,
        200,
        lambda a, n: (f"/admin/flags/{_flag(a, n)}", {"description": "changed"}),
    ),
    Route(
        "DELETE",
        "/admin/flags/{key}",
        "editor",
        UNSCOPED,
        200,
        lambda a, n: (f"/admin/flags/{_flag(a, n)}", None),
    ),
    # A typed flag's variants (#19): shared by every environment.
    Route(
        "POST",
        "/admin/flags/{key}/variants",
        "editor",
        UNSCOPED,
        201,
        lambda a, n: (f"/admin/flags/{_typed_flag(a, n)}/variants", {"name": "c", "value": "z"}),
    ),
    Route(
        "PATCH",
        "/admin/flags/{key}/variants/{name}",
        "editor",
        UNSCOPED,
        200,
        lambda a, n: (f"/admin/flags/{_typed_flag(a, n)}/variants/b", {"value": "w"}),
    ),
    Route(
        "DELETE",
        "/admin/flags/{key}/variants/{name}",
        "editor",
        UNSCOPED,
        200,
        lambda a, n: (f"/admin/flags/{_typed_flag(a, n)}/variants/b", None),
    ),
    Route(
        "PATCH",
        "/admin/flags/{key}/environments/{env}",
        "editor",
        ENV,
        200,
        lambda a, n: (f"/admin/flags/{_flag(a, n)}/environments/{TARGET}", {"enabled": True}),
    ),
    Route(
        "POST",
        "/admin/flags/{key}/kill",
        "operator",
        ENV,
        200,
        lambda a, n: (
            f"/admin/flags/{_flag(a, n)}/kill",
            {"reason": "r", "environments": [TARGET]},
        ),
    ),
    Route(
        "POST",
        "/admin/flags/{key}/unkill",
        "operator",
        ENV,
        200,
        lambda a, n: (
            f"/admin/flags/{_flag(a, n)}/unkill",
            {"reason": "r", "environments": [TARGET]},
        ),
    ),
    Route(
        "GET",
        "/admin/flags/{key}/history",
        "reader",
        ANY,
        200,
        lambda a, n: (f"/admin/flags/{_flag(a, n)}/history", None),
    ),
    Route(
        "GET",
        "/admin/flags/{key}/history",
        "reader",
        ENV,
        200,
        lambda a, n: (f"/admin/flags/{_flag(a, n)}/history?environment={TARGET}", None),
    ),
    Route("GET", "/admin/history", "reader", ANY, 200, lambda a, n: ("/admin/history", None)),
    Route(
        "GET",
        "/admin/history",
        "reader",
        ENV,
        200,
        lambda a, n: (f"/admin/history?environment={TARGET}", None),
    ),
    Route(
        "POST",
        "/admin/tokens",
        "admin",
        ENV,
        201,
        lambda a, n: (
            "/admin/tokens",
            {"name": f"t{n}", "role": "reader", "environments": [TARGET]},
        ),
    ),
    Route(
        "POST",
        "/admin/tokens",
        "admin",
        UNSCOPED,
        201,
        lambda a, n: ("/admin/tokens", {"name": f"t{n}", "role": "reader"}),
    ),
    Route("GET", "/admin/tokens", "admin", ANY, 200, lambda a, n: ("/admin/tokens", None)),
    Route(
        "DELETE",
        "/admin/tokens/{token_id}",
        "admin",
        ENV,
        200,
        lambda a, n: (f"/admin/tokens/{_token_in_target(a, n)}", None),
    ),
]

# Callers: (label, role or None, scope); scope None = every environment.
CALLERS: list[tuple[str, str | None, list[str] | None]] = [
    ("no token", None, None),
    ("unknown token", None, None),
    ("revoked admin", None, None),
] + [
    (f"{role}{suffix}", role, scope)
    for role, (suffix, scope) in itertools.product(
        ROLES, [("", None), (f"@{TARGET}", [TARGET]), (f"@{OTHER}", [OTHER])]
    )
]


def expected_status(route: Route, label: str, role: str | None, scope: list[str] | None) -> int:
    if route.scope == PUBLIC:
        return route.success
    if role is None:
        return 401
    if role == "guard":
        if (route.method, route.template) not in GUARD_ROUTES:
            return 403
    elif role == "client" or RANK[role] < RANK[route.role]:
        return 403
    if scope is not None and route.scope == UNSCOPED:
        return 403
    if scope is not None and route.scope == ENV and TARGET not in scope:
        return 403
    return route.success


def _route_id(route: Route) -> str:
    return f"{route.method} {route.template} [{route.scope}]"


@pytest.mark.parametrize("route", ROUTES, ids=_route_id)
def test_auth_matrix__route_by_role_and_scope__401_403_or_success(api: Any, route: Route) -> None:
    """Every caller gets exactly the status its role and scope allow on this route."""
    secrets: dict[str, str] = {"no token": "", "unknown token": "frl_" + "x" * 43}
    info, revoked = api.store.create_token("revoked", "admin", None, actor="setup")
    api.store.revoke_token(info.id, actor="setup")
    secrets["revoked admin"] = revoked
    for label, role, scope in CALLERS:
        if role is not None:
            secrets[label] = api.token(role, scope)
    mismatches = []
    for n, (label, role, scope) in enumerate(CALLERS):
        path, body = route.build(api, n)
        response = api.request(route.method, path, token=secrets[label], json=body)
        want = expected_status(route, label, role, scope)
        if response.status_code != want:
            mismatches.append(f"{label}: got {response.status_code}, want {want}: {response.text}")
        elif want in (401, 403):
            error = api.error(response)
            assert error["code"] == ("unauthenticated" if want == 401 else "forbidden")
    assert mismatches == []


def test_auth_matrix__covers_every_admin_route() -> None:
    """No route of the admin routers is left out of the matrix."""
    routers = (health.router, environments.router, flags.router, history.router, tokens.router)
    served = {
        (method, route.path)  # type: ignore[attr-defined]
        for router in routers
        for route in router.routes
        for method in route.methods  # type: ignore[attr-defined]
    }
    covered = {(r.method, r.template) for r in ROUTES}
    assert served - covered == set()
