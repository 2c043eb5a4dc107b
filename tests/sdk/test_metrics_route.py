"""SDK reports: POST /sdk/v1/metrics and /sdk/v1/instances, what GET /admin/flags/{key}
and /admin/environments/{env}/clients show of them, the telemetry store's sums, and
the unused-flag report with its CLI. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from api.cli.confirm import format_confirmation
from api.cli.unused import unused
from flags import FlagClient
from flags.store.telemetry import TelemetryStore
from flags.testing import wait_for

from .harness import ENV, Deployment, LiveServer


def sdk_post(server: LiveServer, token: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
    )


def instance(instance_id: str = "i-1", **extra: Any) -> dict[str, Any]:
    return {
        "instance_id": instance_id,
        "environment": ENV,
        "host": "web-1",
        "pid": 4242,
        "app": "shop",
        "applied_version": 3,
        "interval": 10.0,
        **extra,
    }


def test_metrics__sdk_reports__flag_shows_last_evaluated_and_seen(
    deployment: Deployment,
) -> None:
    """Evaluations an SDK makes reach GET /admin/flags/{key}: last_evaluated_at, and
    whether the flag was seen both on and off; app counters sum up per flag."""
    deployment.create_flag("checkout", rollout=0, tenants_on=["acme"])
    server = deployment.server()
    with FlagClient(server.url, deployment.client_token, ENV, metrics_interval=0.2) as client:
        assert client.wait_until_ready(10)
        assert client.is_enabled("checkout", "acme") and not client.is_enabled("checkout", "b")
        client.count("checkout", "corrupt_reads", 3)

        def telemetry() -> dict[str, Any] | None:
            r = deployment.admin_request(server, "GET", "/admin/flags/checkout")
            state = r.json()["environments"][ENV]
            return state if state.get("seen_off") and state.get("seen_on") else None

        state = wait_for(telemetry, what="the metrics report")
    assert state["evaluations_on"] == 1 and state["evaluations_off"] == 1
    assert datetime.fromisoformat(state["last_evaluated_at"]) > datetime.now(UTC) - timedelta(
        minutes=1
    )
    since = datetime.now(UTC) - timedelta(minutes=5)
    totals = server.sdk.telemetry.counter_totals("checkout", ENV, since)
    assert totals == {"evaluations_on": 1.0, "evaluations_off": 1.0, "corrupt_reads": 3.0}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"environment": ENV, "flags": {"checkout": {"on": -1}}}, 422, "flags.checkout.on"),
        ({"environment": ENV, "flags": {"Bad Key": {"on": 1}}}, 422, "flags"),
        ({"environment": ENV, "counters": {"checkout": {"": 1}}}, 422, "counters.checkout"),
        ({"environment": ENV, "extra": 1}, 422, "extra"),
        ({"environment": "staging"}, 403, "environment"),
        ({"environment": ENV, "instance": instance(environment="beta")}, 422, None),
    ],
)
def test_metrics__bad_body__4xx_naming_the_field(
    deployment: Deployment, body: dict[str, Any], status: int, field: str | None
) -> None:
    """Bad reports get a 4xx whose error names the field, never a 500."""
    server = deployment.server()
    r = sdk_post(server, deployment.client_token, "/sdk/v1/metrics", body)
    assert r.status_code == status, r.text
    if field is not None:
        assert r.json()["error"]["field"] == field
    else:
        assert r.json()["error"]["field"] in ("instance.environment", "environment")


def test_metrics__unknown_flag__dropped_not_stored(deployment: Deployment) -> None:
    """Reports of flags the environment does not hold are dropped (no table growth)."""
    deployment.create_flag("checkout")
    server = deployment.server()
    r = sdk_post(
        server,
        deployment.client_token,
        "/sdk/v1/metrics",
        {"environment": ENV, "flags": {"checkout": {"on": 2}, "ghost": {"off": 5}}},
    )
    assert r.status_code == 202 and r.json()["dropped"] == 1
    assert set(server.sdk.telemetry.flag_environments("checkout")) == {ENV}
    assert server.sdk.telemetry.flag_environments("ghost") == {}


def test_instances__report_then_close__listed_then_gone(deployment: Deployment) -> None:
    """An instance report lists the instance; its closing report removes it."""
    server = deployment.server()
    assert sdk_post(server, deployment.client_token, "/sdk/v1/instances", instance()).status_code
    items = deployment.admin_request(server, "GET", f"/admin/environments/{ENV}/clients").json()[
        "items"
    ]
    assert [
        {k: i[k] for k in ("instance_id", "host", "pid", "app", "applied_version")} for i in items
    ] == [{"instance_id": "i-1", "host": "web-1", "pid": 4242, "app": "shop", "applied_version": 3}]
    assert "last_seen_at" in items[0]
    sdk_post(server, deployment.client_token, "/sdk/v1/instances", instance(closed=True))
    r = deployment.admin_request(server, "GET", f"/admin/environments/{ENV}/clients")
    assert r.json()["items"] == []


def test_counter_totals__since__only_later_buckets(deployment: Deployment) -> None:
    """counter_totals sums the buckets at or after ``since`` only."""
    telemetry = TelemetryStore(deployment.store.engine)
    now = datetime.now(UTC)
    telemetry.record_metrics(ENV, {"f": (1, 2)}, {"f": {"reads": 10}}, at=now - timedelta(hours=2))
    telemetry.record_metrics(ENV, {"f": (0, 3)}, {"f": {"reads": 5}}, at=now)
    telemetry.record_metrics(ENV, {}, {"f": {"reads": 1}}, at=now)
    assert telemetry.counter_totals("f", ENV, now - timedelta(hours=1)) == {
        "evaluations_on": 3.0,
        "reads": 6.0,
    }
    assert telemetry.counter_totals("f", ENV, now - timedelta(hours=3))["reads"] == 16.0
    assert telemetry.flag_environments("f")[ENV]["evaluations_on"] == 5


def test_unused__report_and_cli__flags_not_evaluated_since(deployment: Deployment) -> None:
    """GET /admin/reports/unused lists flags no SDK evaluated since then; the CLI prints it."""
    deployment.create_flag("stale")
    deployment.create_flag("busy")
    telemetry = TelemetryStore(deployment.store.engine)
    later = datetime.now(UTC) + timedelta(hours=2)
    telemetry.record_metrics(ENV, {"busy": (0, 1)}, at=later)
    server = deployment.server()
    since = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = deployment.admin_request(server, "GET", "/admin/reports/unused", params={"since": since})
    assert [i["key"] for i in r.json()["items"]] == ["stale"]
    assert r.json()["items"][0]["last_evaluated_at"] is None
    assert deployment.admin_request(server, "GET", "/admin/reports/unused").json()["items"] == []

    app = typer.Typer()
    app.command()(unused)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    args = ["unused", "--since", since, "--url", server.url, "--token", deployment.admin]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "stale" in out.stdout and "busy" not in out.stdout
    bad = runner.invoke(app, ["unused", "--since", "soon", "--url", server.url, "--token", "x"])
    assert bad.exit_code != 0


def test_format_confirmation__all_and_some__one_line() -> None:
    """The CLI's kill line names the count, the time and the laggards."""
    assert (
        format_confirmation({"confirmed": 4, "live": 4, "lagging": [], "elapsed_ms": 23})
        == "confirmed 4/4 SDK instances in 23 ms"
    )
    lagging = [{"host": "web-1", "pid": 7, "app": "shop", "applied_version": 41}]
    line = format_confirmation({"confirmed": 3, "live": 4, "lagging": lagging, "elapsed_ms": 2000})
    assert line == (
        "NOT confirmed: 3/4 SDK instances after 2000 ms; lagging: web-1:7 (shop) at version 41"
    )
    assert "no live SDK" in format_confirmation({"confirmed": 0, "live": 0})


def test_sdk__fractional_counts__whole_parts_reported_and_fraction_carried(
    deployment: Deployment,
) -> None:
    """The server takes whole counts only: the SDK reports the whole part of each
    increase and carries the fraction, so 0.5 + 0.5 + 0.5 reports 1, then 2 with one more."""
    deployment.create_flag("checkout")
    server = deployment.server()
    since = datetime.now(UTC) - timedelta(minutes=1)
    telemetry = server.sdk.telemetry
    with FlagClient(server.url, deployment.client_token, ENV, metrics_interval=0.1) as client:
        assert client.wait_until_ready(10)
        for _ in range(3):
            client.count("checkout", "reads", 0.5)
        wait_for(
            lambda: telemetry.counter_totals("checkout", ENV, since).get("reads") == 1.0,
            what="one whole read reported",
        )
        client.count("checkout", "reads", 0.5)
        wait_for(
            lambda: telemetry.counter_totals("checkout", ENV, since).get("reads") == 2.0,
            what="the carried half completing a second read",
        )
        assert client.stats()["errors"] == 0
