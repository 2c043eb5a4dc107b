"""A kill reaches real SDK processes: over Redis, over SSE with Redis stopped, and by
polling with both Redis and the stream gone; ``?wait=`` confirms it from their reports.

Each test starts a real server (uvicorn, real TCP) and 4 SDK processes
(``worker.py``); every wait is on a condition with a bounded timeout.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from api.routes.sdk import SdkServerSettings
from flags.testing import wait_for
from flags.testing.redis_server import RedisServer

from .harness import ENV, Deployment, LiveServer, Worker

pytestmark = pytest.mark.slow

PROCESSES = 4


def start_workers(
    start: Callable[..., Worker], d: Deployment, server: LiveServer, *extra: str
) -> list[Worker]:
    workers = [
        start(
            "--url",
            server.url,
            "--token",
            d.client_token,
            "--flag",
            "checkout",
            "--metrics",
            "1",
            *extra,
        )
        for _ in range(PROCESSES)
    ]
    for w in workers:
        w.wait_for(lambda s: s.get("event") == "change" and s["enabled"] is True, timeout=30)
    # Every instance has reported the version it applied.
    wait_for(
        lambda: (
            len(
                d.admin_request(server, "GET", f"/admin/environments/{ENV}/clients").json()["items"]
            )
            == PROCESSES
        ),
        timeout=15,
        what="4 live instances",
    )
    return workers


def kill_and_confirm(d: Deployment, server: LiveServer, workers: list[Worker]) -> dict:
    r = d.admin_request(
        server,
        "POST",
        "/admin/flags/checkout/kill",
        params={"wait": "10s"},
        json={"reason": "incident", "environments": [ENV]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    for w in workers:
        w.wait_for(lambda s: s.get("event") == "change" and s["killed"] is True, timeout=15)
    return body


def test_kill__redis__seen_by_4_processes_and_confirmed(
    deployment: Deployment, redis_server: RedisServer, workers: Callable[..., Worker]
) -> None:
    """Over Redis: every process sees the kill, and ?wait= confirms 4 of 4."""
    deployment.create_flag("checkout")
    server = deployment.server(redis_url=redis_server.url)
    wait_for(lambda: server.sdk.subscriber.live, what="the server's redis subscription")
    procs = start_workers(workers, deployment, server, "--redis-url", redis_server.url)
    for w in procs:
        w.wait_for(lambda s: s.get("source") == "redis" or s.get("event") == "change")
    body = kill_and_confirm(deployment, server, procs)
    assert (body["confirmed"], body["live"], body["lagging"]) == (4, 4, [])
    assert body["changed"] == [ENV] and body["elapsed_ms"] < 10_000
    sources = {w.latest()["source"] for w in procs}  # type: ignore[index]
    assert sources == {"redis"}


def test_kill__redis_stopped__sse_carries_it(
    deployment: Deployment, redis_server: RedisServer, workers: Callable[..., Worker]
) -> None:
    """With Redis stopped, the SDKs (and the server's publish) fall back: the kill is
    committed, carried by SSE, and confirmed over HTTP reports."""
    deployment.create_flag("checkout")
    server = deployment.server(redis_url=redis_server.url)
    redis_server.stop()
    procs = start_workers(workers, deployment, server, "--redis-url", redis_server.url)
    body = kill_and_confirm(deployment, server, procs)
    assert (body["confirmed"], body["live"]) == (4, 4)
    assert {w.latest()["source"] for w in procs} == {"stream"}  # type: ignore[index]
    # The server's publish failed, and the kill was committed all the same.
    wait_for(lambda: server.sdk.publisher.failures >= 1, what="a failed publish")
    assert deployment.store.get_state("checkout", ENV).killed


def test_kill__no_redis_no_stream__polling_carries_it(
    deployment: Deployment, workers: Callable[..., Worker]
) -> None:
    """With no Redis and streams refused (503), ETag polling carries the kill."""
    deployment.create_flag("checkout")
    server = deployment.server(sdk_settings=SdkServerSettings(max_streams=0))
    procs = start_workers(workers, deployment, server, "--poll", "0.2")
    body = kill_and_confirm(deployment, server, procs)
    assert (body["confirmed"], body["live"]) == (4, 4)
    assert {w.latest()["source"] for w in procs} == {"poll"}  # type: ignore[index]
