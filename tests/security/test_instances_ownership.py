"""Issue #14, finding 3: SDK instance reports cannot be forged across tokens.

An instance belongs to the token that first reported it: another token can neither
overwrite nor close it (403), no token can move it to another environment (422), a
token holds a bounded number of live instances (429), and instances are pruned from
the server's memory after their live window. Attacks go to a real server over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sdk.harness import ENV, Deployment, LiveServer

from api.routes.sdk import SdkServerSettings

STAGING = "staging"


@pytest.fixture
def deployment(database_url: str) -> Iterator[Deployment]:
    d = Deployment(database_url)
    if STAGING not in {e.name for e in d.store.list_environments()}:
        d.store.create_environment(STAGING, actor="test")
    try:
        yield d
    finally:
        d.close()


def report(server: LiveServer, token: str, **overrides: Any) -> httpx.Response:
    body = {
        "instance_id": "i-victim",
        "environment": ENV,
        "host": "app-1",
        "pid": 100,
        "applied_version": 5,
        "interval": 10.0,
        **overrides,
    }
    return httpx.post(
        f"{server.url}/sdk/v1/instances",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def clients(d: Deployment, server: LiveServer) -> list[dict[str, Any]]:
    r = d.admin_request(server, "GET", f"/admin/environments/{ENV}/clients")
    assert r.status_code == 200, r.text
    return r.json()["items"]  # type: ignore[no-any-return]


def client_token(d: Deployment, name: str, envs: list[str]) -> str:
    _info, token = d.store.create_token(name, "client", envs, actor="test")
    return token


def test_instance__other_token_overwrites__403_and_unchanged(deployment: Deployment) -> None:
    """A second client token cannot rewrite another token's instance (version, host)."""
    server = deployment.server()
    attacker = client_token(deployment, "attacker", [ENV])
    assert report(server, deployment.client_token).status_code == 202
    r = report(server, attacker, applied_version=0, host="forged")
    assert r.status_code == 403, r.text
    assert r.json()["error"]["field"] == "instance_id"
    [item] = clients(deployment, server)
    assert (item["host"], item["applied_version"]) == ("app-1", 5)


def test_instance__other_token_closes__403_and_still_live(deployment: Deployment) -> None:
    """Closing someone else's instance (hiding it from kill confirmation) is refused."""
    server = deployment.server()
    attacker = client_token(deployment, "attacker", [ENV])
    assert report(server, deployment.client_token).status_code == 202
    assert report(server, attacker, closed=True).status_code == 403
    assert [i["instance_id"] for i in clients(deployment, server)] == ["i-victim"]


def test_instance__forged_in_metrics_body__403_and_no_counters(deployment: Deployment) -> None:
    """The instance part of a metrics report is checked before anything is stored."""
    deployment.create_flag("checkout")
    server = deployment.server()
    attacker = client_token(deployment, "attacker", [ENV])
    assert report(server, deployment.client_token).status_code == 202
    body = {
        "environment": ENV,
        "instance": {
            "instance_id": "i-victim",
            "environment": ENV,
            "host": "x",
            "pid": 1,
            "applied_version": 0,
        },
        "counters": {"checkout": {"errors": 1000}},
    }
    r = httpx.post(
        f"{server.url}/sdk/v1/metrics",
        json=body,
        headers={"Authorization": f"Bearer {attacker}"},
        timeout=10,
    )
    assert r.status_code == 403, r.text
    since = datetime.now(UTC) - timedelta(hours=1)
    assert server.sdk.telemetry.counter_totals("checkout", ENV, since) == {}


def test_instance__moved_to_another_environment__422(deployment: Deployment) -> None:
    """Even its own token cannot move an instance to another environment."""
    server = deployment.server()
    both = client_token(deployment, "both", [ENV, STAGING])
    assert report(server, both).status_code == 202
    r = report(server, both, environment=STAGING)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "environment"
    assert [i["instance_id"] for i in clients(deployment, server)] == ["i-victim"]


def test_instance__owner_reports_again__accepted(deployment: Deployment) -> None:
    """The owning token goes on reporting (and may close its own instance)."""
    server = deployment.server()
    assert report(server, deployment.client_token).status_code == 202
    assert report(server, deployment.client_token, applied_version=6).status_code == 202
    assert clients(deployment, server)[0]["applied_version"] == 6
    assert report(server, deployment.client_token, closed=True).status_code == 202
    assert clients(deployment, server) == []


def test_instances__cap_per_token__429_then_pruned_after_live_window(
    deployment: Deployment,
) -> None:
    """A token beyond its cap of live instances gets a 429 with a JSON body; once the
    instances' live window passes they are pruned from memory and room frees up."""
    server = deployment.server(sdk_settings=SdkServerSettings(max_instances_per_token=3))
    registry = server.sdk.registry
    now = [datetime.now(UTC)]
    registry.clock = lambda: now[0]
    server.sdk.telemetry.clock = lambda: now[0]  # the cap is counted in the database
    for i in range(3):
        assert report(server, deployment.client_token, instance_id=f"i-{i}").status_code == 202
    r = report(server, deployment.client_token, instance_id="i-3")
    assert r.status_code == 429, r.text
    assert r.json()["error"] == {
        "code": "too_many_instances",
        "message": "this token reports 3 live instances already",
        "field": "instance_id",
    }
    # Another token is not affected by this one's cap.
    other = client_token(deployment, "other", [ENV])
    assert report(server, other, instance_id="o-1").status_code == 202
    # 10 s interval: live for 30 s. Past it, the instances are pruned from memory.
    now[0] += timedelta(seconds=31)
    assert report(server, deployment.client_token, instance_id="i-3").status_code == 202
    assert registry.instance_count() == 1  # i-3 alone: the dead ones were pruned
    now[0] += timedelta(seconds=31)
    assert registry.prune() == 1  # the flush loop's pruning, run here at once
    assert registry.instance_count() == 0
