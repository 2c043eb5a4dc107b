"""Kills propagate over Redis Sentinel, and keep propagating after the master fails over.

One server (uvicorn, real TCP) whose fan-out publishes and subscribes through a
``redis+sentinel://`` URL, and two SDK processes (``tests/sdk/worker.py``) syncing
over the same URL, against a throwaway master + replica + three sentinels of the
test's own. A kill reaches both processes over Redis; then the master is SIGKILLed,
and once a replica is promoted, changes reach both processes over Redis again (in
between the stream or polling may carry them; no change is lost).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from flags.testing import wait_for
from tests.sdk.harness import ENV, Deployment, LiveServer, Worker

from .topology import SentinelSet

pytestmark = pytest.mark.slow

PROCESSES = 2
# Seconds from the promotion within which Redis must carry changes again.
BACK_WITHIN = 10.0


@pytest.fixture
def deployment(sqlite_url: str) -> Iterator[Deployment]:
    d = Deployment(sqlite_url)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def sdk_workers(deployment: Deployment, sentinel_set: SentinelSet) -> Iterator[list[Worker]]:
    """A server on the Sentinel URL and two SDK processes on it, each with the flag."""
    deployment.create_flag("checkout")
    server = deployment.server(redis_url=sentinel_set.url)
    wait_for(lambda: server.sdk.subscriber.live, 15, "the server's Sentinel subscription")
    args = ["--url", server.url, "--token", deployment.client_token, "--flag", "checkout"]
    args += ["--redis-url", sentinel_set.url, "--metrics", "60"]
    procs = [Worker(args) for _ in range(PROCESSES)]
    try:
        for w in procs:
            w.wait_for(lambda s: s.get("event") == "change" and s["enabled"] is True, 30)
        yield procs
    finally:
        for w in procs:
            if w.proc.stdin is not None and w.proc.poll() is None:
                with contextlib.suppress(OSError):
                    w.proc.stdin.close()
        for w in procs:
            w.stop()


def change(d: Deployment, server: LiveServer, killed: bool) -> int:
    """Kill or unkill ``checkout``; the environment version it produced."""
    r = d.admin_request(
        server,
        "POST",
        f"/admin/flags/checkout/{'kill' if killed else 'unkill'}",
        json={"reason": "sentinel drill", "environments": [ENV]},
    )
    assert r.status_code == 200, r.text
    return d.store.get_environment(ENV).version


def seen(workers: list[Worker], version: int, killed: bool, timeout: float) -> set[str]:
    """Wait until every worker applied ``version`` with that kill state; their sources."""
    sources = set()
    for w in workers:
        got = w.wait_for(
            lambda s: s.get("event") == "change" and s["version"] >= version,
            timeout,
        )
        assert got["killed"] is killed
        sources.add(got["source"])
    return sources


def test_kill__sentinel_failover__redis_carries_kills_before_and_after(
    deployment: Deployment, sentinel_set: SentinelSet, sdk_workers: list[Worker]
) -> None:
    """Before the failover a kill reaches both SDK processes over Redis; after the master
    is killed and a replica promoted, changes reach them over Redis again within
    BACK_WITHIN seconds, and every change in between reaches them too."""
    server = deployment.servers[0]
    # Redis live on both SDKs: a change they apply names "redis" as its source.
    deadline = time.monotonic() + 15
    killed = True
    while True:
        version = change(deployment, server, killed)
        if seen(sdk_workers, version, killed, 15) == {"redis"}:
            break
        assert time.monotonic() < deadline, "the SDKs never took a change over Redis"
        killed = not killed

    old = sentinel_set.kill_master()
    promoted_port = sentinel_set.wait_promoted(old.port)
    promoted_at = time.monotonic()
    assert promoted_port != old.port
    # Every change made from now on arrives (over whichever path is live); Redis
    # carries them again once the subscribers found the promoted master.
    changes_after = 0
    while True:
        killed = not killed
        version = change(deployment, server, killed)
        changes_after += 1
        sources = seen(sdk_workers, version, killed, 15)
        if sources == {"redis"}:
            break
        assert time.monotonic() - promoted_at < BACK_WITHIN, (
            f"Redis did not carry a change within {BACK_WITHIN}s of the promotion "
            f"(last sources {sources})"
        )
        wait_for(lambda: server.sdk.subscriber.live, BACK_WITHIN, "the server's subscription")
    print(f"redis back {time.monotonic() - promoted_at:.2f}s after the promotion, "
          f"{changes_after} changes")  # fmt: skip
    # The SDKs can apply a change before the publisher thread counts its publish.
    wait_for(lambda: server.sdk.publisher.published >= 2, 5, "the server's publish count")
