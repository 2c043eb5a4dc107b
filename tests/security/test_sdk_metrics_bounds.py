"""Issue #14, findings 1 and 4: what a ``client`` token may report.

Counters and evaluation counts are whole, non-negative and bounded, per value and per
report; every numeric field of every SDK-facing body (flagrail and Unleash routes) is
bounded to what its column and meaning hold, so an oversized number is a 422 naming
the field and never reaches a 500. Each attack is sent to a real server over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sdk.harness import ENV, Deployment, LiveServer
from sqlalchemy import func, select

from api.routes.sdk import MAX_COUNT, MAX_PID, MAX_REPORT_TOTAL, MAX_VERSION
from flags.store.tables import sdk_counters, sdk_flag_evaluations, sdk_instances


@pytest.fixture
def deployment(database_url: str) -> Iterator[Deployment]:
    d = Deployment(database_url)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def server(deployment: Deployment) -> LiveServer:
    deployment.create_flag("checkout.v2")
    return deployment.server()


def post(server: LiveServer, token: str, path: str, body: Any, **params: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}{path}",
        json=body,
        params=params,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def instance(**overrides: Any) -> dict[str, Any]:
    return {
        "instance_id": "i-1",
        "environment": ENV,
        "host": "h",
        "pid": 1,
        "applied_version": 1,
        "interval": 10.0,
        **overrides,
    }


def rows(deployment: Deployment, table: Any) -> int:
    with deployment.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


HUGE = 2**64

# (body, field the 422 names)
BAD_METRICS = [
    pytest.param({"counters": {"checkout.v2": {"errors": -1}}}, "counters.checkout.v2.errors",
                 id="counter-negative"),
    pytest.param({"counters": {"checkout.v2": {"errors": -1e300}}}, "counters.checkout.v2.errors",
                 id="counter-minus-1e300"),
    pytest.param({"counters": {"checkout.v2": {"errors": 1e300}}}, "counters.checkout.v2.errors",
                 id="counter-1e300"),
    pytest.param({"counters": {"checkout.v2": {"errors": 1.5}}}, "counters.checkout.v2.errors",
                 id="counter-fraction"),
    pytest.param({"counters": {"checkout.v2": {"errors": HUGE}}}, "counters.checkout.v2.errors",
                 id="counter-2**64"),
    pytest.param({"counters": {"checkout.v2": {"errors": MAX_COUNT + 1}}},
                 "counters.checkout.v2.errors", id="counter-over-bound"),
    pytest.param({"counters": {"checkout.v2": {"errors": True}}}, "counters.checkout.v2.errors",
                 id="counter-bool"),
    pytest.param({"flags": {"checkout.v2": {"on": HUGE}}}, "flags.checkout.v2.on", id="on-2**64"),
    pytest.param({"flags": {"checkout.v2": {"off": -1}}}, "flags.checkout.v2.off", id="off-neg"),
    pytest.param({"flags": {"checkout.v2": {"off": MAX_COUNT + 1}}}, "flags.checkout.v2.off",
                 id="off-over-bound"),
    pytest.param(
        {"flags": {f"f{i}": {"on": MAX_COUNT, "off": MAX_COUNT} for i in range(501)}},
        "flags", id="report-total-over-bound",
    ),
    pytest.param({"instance": instance(applied_version=HUGE)}, "instance.applied_version",
                 id="applied-version-2**64"),
    pytest.param({"instance": instance(applied_version=MAX_VERSION + 1)},
                 "instance.applied_version", id="applied-version-over-bigint"),
    pytest.param({"instance": instance(pid=MAX_PID + 1)}, "instance.pid", id="pid-over-int32"),
    pytest.param({"instance": instance(interval=1e308)}, "instance.interval", id="interval"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), BAD_METRICS)
def test_metrics__out_of_bounds__422_naming_the_field_and_nothing_stored(
    deployment: Deployment, server: LiveServer, body: dict[str, Any], field: str
) -> None:
    """A client token's oversized, negative or fractional count is refused whole."""
    r = post(server, deployment.client_token, "/sdk/v1/metrics", {"environment": ENV, **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert rows(deployment, sdk_counters) == 0
    assert rows(deployment, sdk_flag_evaluations) == 0
    assert rows(deployment, sdk_instances) == 0


def test_metrics__report_total_over_bound__names_counters(
    deployment: Deployment, server: LiveServer
) -> None:
    """Counters that push a report's total beyond the bound are refused (field counters)."""
    per_flag = {f"c{i}": MAX_COUNT for i in range(50)}
    flags = [f"f{i}" for i in range(MAX_REPORT_TOTAL // (50 * MAX_COUNT) + 1)]
    body = {"environment": ENV, "counters": {flag: per_flag for flag in flags}}
    r = post(server, deployment.client_token, "/sdk/v1/metrics", body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "counters"


def test_metrics__bound_values__accepted_and_summed(
    deployment: Deployment, server: LiveServer
) -> None:
    """The largest allowed values are accepted and stored exactly."""
    body = {
        "environment": ENV,
        "flags": {"checkout.v2": {"on": MAX_COUNT, "off": 0}},
        "counters": {"checkout.v2": {"errors": MAX_COUNT, "reads": 0}},
        "instance": instance(applied_version=MAX_VERSION, pid=MAX_PID),
    }
    r = post(server, deployment.client_token, "/sdk/v1/metrics", body)
    assert r.status_code == 202, r.text
    with deployment.store.engine.connect() as conn:
        on = conn.execute(select(sdk_flag_evaluations.c.evaluations_on)).scalar_one()
    assert on == MAX_COUNT


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(instance(applied_version=HUGE), "applied_version", id="version-2**64"),
        pytest.param(instance(applied_version=-1), "applied_version", id="version-negative"),
        pytest.param(instance(pid=HUGE), "pid", id="pid-2**64"),
        pytest.param(instance(interval=0), "interval", id="interval-zero"),
        pytest.param(instance(interval=HUGE), "interval", id="interval-2**64"),
    ],
)
def test_instances__out_of_bounds__422_naming_the_field(
    deployment: Deployment, server: LiveServer, body: dict[str, Any], field: str
) -> None:
    """``POST /sdk/v1/instances`` bounds every number to its column."""
    r = post(server, deployment.client_token, "/sdk/v1/instances", body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        pytest.param(
            "/api/client/metrics",
            {"appName": "a", "bucket": {"toggles": {"checkout.v2": {"yes": HUGE}}}},
            "bucket.toggles.checkout.v2.yes",
            id="yes-2**64",
        ),
        pytest.param(
            "/api/client/metrics",
            {"appName": "a", "bucket": {"toggles": {"checkout.v2": {"no": MAX_COUNT + 1}}}},
            "bucket.toggles.checkout.v2.no",
            id="no-over-bound",
        ),
        pytest.param(
            "/api/client/metrics",
            {"appName": "a", "bucket": {"toggles": {"checkout.v2": {"no": -1}}}},
            "bucket.toggles.checkout.v2.no",
            id="no-negative",
        ),
        pytest.param(
            "/api/client/register",
            {"appName": "a", "interval": HUGE},
            "interval",
            id="register-interval-2**64",
        ),
    ],
)
def test_unleash__out_of_bounds__422_naming_the_field(
    deployment: Deployment, server: LiveServer, path: str, body: dict[str, Any], field: str
) -> None:
    """The Unleash client routes bound their counts too (2**64 was a 500)."""
    r = post(server, deployment.client_token, path, body, environment=ENV)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert rows(deployment, sdk_flag_evaluations) == 0


def test_unleash__bound_value__accepted(deployment: Deployment, server: LiveServer) -> None:
    """``yes`` at the bound is counted."""
    body = {"appName": "a", "bucket": {"toggles": {"checkout.v2": {"yes": MAX_COUNT}}}}
    r = post(server, deployment.client_token, "/api/client/metrics", body, environment=ENV)
    assert r.status_code == 202, r.text
    assert rows(deployment, sdk_flag_evaluations) == 1
