"""Issue #14, finding 4: SDK counters do not grow the database forever.

The server prunes counters older than ``FLAGRAIL_TELEMETRY_RETENTION`` on a schedule
and rolls older buckets up per hour. Under a steady report rate, sent over HTTP to a
real server whose telemetry clock is injected (no sleeps), ``sdk_counters`` stops
growing once the retention is reached, and the sums survive the roll-up.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from unittest import mock

import httpx
import pytest
from sdk.harness import ENV, Deployment, LiveServer
from sqlalchemy import select

from flags.store.telemetry import Reporter, TelemetryStore, sdk_counters
from flags.testing import wait_for


@pytest.fixture
def deployment(database_url: str) -> Iterator[Deployment]:
    d = Deployment(database_url)
    try:
        yield d
    finally:
        d.close()


RETENTION = timedelta(hours=2)
ROLLUP_AFTER = timedelta(minutes=10)
# Each report is one real HTTP request (~10-20 ms here): every 30 s is 480 of them over
# the four hours, and still one row per counter per report until the roll-up.
REPORT_EVERY = timedelta(seconds=30)
PRUNE_EVERY = timedelta(minutes=5)
SIMULATED = timedelta(hours=4)


def test_steady_reports__table_stops_growing_once_retention_is_reached(
    deployment: Deployment,
) -> None:
    """Four simulated hours of a report every 30 s: after two hours (the retention) the
    row count stays under a fixed bound, where keeping everything would double it."""
    deployment.create_flag("checkout")
    server: LiveServer = deployment.server()
    telemetry, retention = server.sdk.telemetry, server.sdk.retention
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    telemetry.clock = retention.clock = lambda: now[0]
    retention.retention, retention.rollup_after = RETENTION, ROLLUP_AFTER
    body = {
        "environment": ENV,
        "flags": {"checkout": {"on": 1}},
        "counters": {"checkout": {"reads": 2}},
    }
    end = now[0] + SIMULATED
    next_prune = now[0] + PRUNE_EVERY
    counts: list[tuple[datetime, int]] = []
    reports = 0
    headers = {"Authorization": f"Bearer {deployment.client_token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as http:
        while now[0] < end:
            assert http.post("/sdk/v1/metrics", json=body).status_code == 202
            reports += 1
            now[0] += REPORT_EVERY
            if now[0] >= next_prune:
                next_prune += PRUNE_EVERY
                retention.run_once()
                counts.append((now[0], telemetry.counter_rows()))
    # Per-second rows live up to ROLLUP_AFTER plus the hour the cutoff is truncated to;
    # every older hour is one row per counter (2 counters), for RETENTION + 1 hours.
    per_second = int((ROLLUP_AFTER + timedelta(hours=1)) / REPORT_EVERY) + 1
    hourly = int(RETENTION / timedelta(hours=1)) + 2
    bound = 2 * (per_second + hourly)
    start = counts[0][0] - PRUNE_EVERY
    late = [n for at, n in counts if at - start >= RETENTION]
    assert late and max(late) <= bound, (max(late), bound)
    assert max(late) < reports  # keeping every row would hold 2 per report
    # Growth stopped: the last hour holds no more rows at its peak than the one before.
    last = [n for at, n in counts if at >= end - timedelta(hours=1)]
    before = [n for at, n in counts if end - timedelta(hours=2) <= at < end - timedelta(hours=1)]
    assert max(last) <= max(before)
    # Roll-up keeps the sums: the whole last full hour's reads are there in total.
    hour_start = (end - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    totals = telemetry.counter_totals("checkout", ENV, hour_start)
    expected = sum(1 for i in range(reports) if hour_start <= start + i * REPORT_EVERY)
    assert totals == {"evaluations_on": float(expected), "reads": float(2 * expected)}


def test_server__runs_retention_on_its_schedule(deployment: Deployment) -> None:
    """``FLAGRAIL_TELEMETRY_PRUNE_INTERVAL`` drives the server's own retention thread."""
    with mock.patch.dict(os.environ, {"FLAGRAIL_TELEMETRY_PRUNE_INTERVAL": "0.05"}):
        server = deployment.server()
    retention = server.sdk.retention
    assert retention.retention == timedelta(days=90)  # the default
    wait_for(lambda: retention.runs >= 3, what="three scheduled retention runs")
    assert retention.failures == 0


def test_rollup__two_tokens__one_row_per_hour_and_token_and_sources_kept(
    deployment: Deployment,
) -> None:
    """Roll-up merges each token's per-second buckets into one hourly row of that token
    (``sdk_counters.token_id`` survives), so after it a guard's attribution still names
    each token with its own sum; rows from before 0008 (token ``""``) stay unattributed."""
    store = deployment.store
    telemetry = TelemetryStore(store.engine)
    honest, _ = store.create_token("honest-app", "client", [ENV], actor="test")
    leaked, _ = store.create_token("leaked-app", "client", [ENV], actor="test")
    hour = datetime(2026, 1, 1, 10, tzinfo=UTC)
    for second in range(0, 3600, 600):  # six buckets per token in one hour
        at = hour + timedelta(seconds=second)
        for info, errors in ((honest, 1), (leaked, 100)):
            reporter = Reporter(f"{info.name} ({info.id})", None, info.id)
            telemetry.record_metrics(ENV, {}, {"checkout": {"errors": errors}}, at=at)
            telemetry.record_metrics(
                ENV, {}, {"checkout": {"errors": errors}}, at=at, reporter=reporter
            )
    assert telemetry.counter_rows() == 6 * 3  # per second: two tokens and "" (unattributed)
    removed = telemetry.rollup(hour + timedelta(hours=2))
    assert removed == 5 * 3 and telemetry.counter_rows() == 3
    c = sdk_counters.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(c.token_id, c.bucket_at, c.value).order_by(c.token_id)).all()
    assert [(r.token_id, r.value) for r in rows] == sorted(
        [("", 606.0), (honest.id, 6.0), (leaked.id, 600.0)]
    )
    fresh = TelemetryStore(store.engine)  # heard none of it: the database alone
    assert fresh.counter_sources("checkout", ENV, "errors", hour) == [
        {"token": "(unattributed)", "instance_id": None, "count": 606.0},
        {"token": f"leaked-app ({leaked.id})", "instance_id": None, "count": 600.0},
        {"token": f"honest-app ({honest.id})", "instance_id": None, "count": 6.0},
    ]
