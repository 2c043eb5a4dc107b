"""Issue #14, finding 9: SSE streams cannot grow a server without bound.

One token holds at most ``FLAGRAIL_MAX_STREAMS_PER_TOKEN`` streams (a 429 with a JSON
body beyond it), and each stream's queue is bounded: a reader that falls behind is
sent one snapshot (a resync) instead of every change. A ``flagrail serve`` process
with a stream that never reads takes 10,000 changes and grows by under 20 MB of RSS
(read from ``/proc``).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sdk.harness import ENV, Deployment, StreamReader

from api.routes.sdk import SdkServerSettings
from flags.testing import wait_for
from tests.serve import ServeProcess

CHANGES = 10_000
RSS_BUDGET = 20 * 1024 * 1024


@pytest.fixture
def deployment(sqlite_url: str) -> Iterator[Deployment]:
    d = Deployment(sqlite_url)
    try:
        yield d
    finally:
        d.close()


def test_streams__over_the_per_token_cap__429_with_a_json_body(deployment: Deployment) -> None:
    """The third stream of a token capped at two is refused; another token still gets one."""
    deployment.create_flag("checkout")
    server = deployment.server(sdk_settings=SdkServerSettings(max_streams_per_token=2))
    readers = [StreamReader(server.url, deployment.client_token) for _ in range(2)]
    try:
        for reader in readers:
            wait_for(lambda reader=reader: reader.of("snapshot"), what="an open stream")
        r = httpx.get(
            f"{server.url}/sdk/v1/stream",
            params={"environment": ENV},
            headers={"Authorization": f"Bearer {deployment.client_token}"},
            timeout=10,
        )
        assert r.status_code == 429, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "too_many_streams"
        assert r.json()["limit"] == 2
        _info, other = deployment.store.create_token("other", "client", [ENV], actor="test")
        third = StreamReader(server.url, other)
        readers.append(third)
        wait_for(lambda: third.of("snapshot"), what="the other token's stream")
    finally:
        for reader in readers:
            reader.close()


def _rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _stalled_stream(port: int, token: str) -> socket.socket:
    """A stream request on a socket with a tiny receive buffer that is never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        (
            f"GET /sdk/v1/stream?environment={ENV} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    return sock


WRITERS = 4


def _kill_unkill(port: int, admin: str, flag: str, count: int) -> None:
    """``count`` changes to ``flag``, kills and unkills in turn, on one kept connection.

    Kills and unkills are the cheapest changes the server takes (its kill fast path),
    and ``http.client`` the cheapest client: on 2 cores the test's wall time is the
    CPU of the changes, server and client together."""
    headers = {"Authorization": f"Bearer {admin}", "Content-Type": "application/json"}
    body = json.dumps({"reason": "stalled-stream drill"})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(count):
            action = "unkill" if i % 2 else "kill"
            conn.request("POST", f"/admin/flags/{flag}/{action}", body, headers)
            response = conn.getresponse()
            text = response.read()
            assert response.status == 200, text
    finally:
        conn.close()


def _changes(port: int, admin: str, flags: list[str], total: int) -> None:
    """``total`` changes, split evenly over ``flags``, each flag's from its own thread
    (the server takes them concurrently, as it would from several operators)."""
    with ThreadPoolExecutor(len(flags)) as pool:
        done = [pool.submit(_kill_unkill, port, admin, f, total // len(flags)) for f in flags]
        for future in done:
            future.result()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_stream_never_read__10000_changes__rss_grows_under_20mb(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A stream that never reads costs bounded memory, and when it reads at last it is
    sent a snapshot, not the 10,000 changes it missed. Each change carries 200 tenants
    (several KB a frame), so the changes outgrow every kernel socket buffer; with the
    queue's bound taken out, RSS grew by 181 MB. The changes come from four writers at
    once (four flags), which also keeps the test's wall time down."""
    flags = [f"checkout-{n}" for n in range(WRITERS)]
    for flag in flags:
        deployment.create_flag(flag, tenants_on=[f"tenant-{i:04d}" for i in range(200)])
    # Info-level logging (the server's default) and no heartbeat on the stalled stream
    server = ServeProcess(
        deployment.database_url,
        tmp_path / "server.log",
        env={"FLAGRAIL_HEARTBEAT_INTERVAL": "3600"},
        log_level="info",
    )
    sock = None
    try:
        server.wait_healthy(60)
        # Warm up every code path, and fill the replay ring (1,024 changes, a fixed
        # cost of the server whatever its streams), before the baseline.
        _changes(server.port, deployment.admin, flags, 1100)
        sock = _stalled_stream(server.port, deployment.client_token)
        headers = {"Authorization": f"Bearer {deployment.admin}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
            wait_for(
                lambda: http.get("/metrics").status_code == 200 and _rss(server.pid) > 0,
                what="the server",
            )
        before = _rss(server.pid)
        _changes(server.port, deployment.admin, flags, CHANGES)
        grown = _rss(server.pid) - before
        assert grown < RSS_BUDGET, f"RSS grew by {grown / 1e6:.1f} MB"
        # Reading now: the stream resynced with a snapshot instead of queueing every change.
        sock.settimeout(10)
        received = b""
        while received.count(b"event: snapshot") < 2:
            chunk = sock.recv(1 << 20)
            assert chunk, "the stream ended"
            received += chunk
        assert received.count(b"event: change") < CHANGES // 2
    finally:
        if sock is not None:
            sock.close()
        server.stop()
