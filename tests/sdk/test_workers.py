"""``flagrail serve --workers 2``: a kill made through one worker reaches streams on both.

A real ``flagrail serve --workers 2`` process on a SQLite database of the test's own.
Streams are plain sockets; which worker serves each one is read from ``/proc`` (the
worker process that holds the server side of the connection), so the test knows it
has streams on both workers before it kills. Whichever worker takes the kill, the
other one's streams get it through the database (no Redis here).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flags.testing import wait_for
from flags.testing.redis_server import free_port

from .harness import ENV, Deployment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)"),
]

MAX_STREAMS = 96
BURST = 8


class RawStream:
    """One SSE stream on a plain socket; ``ids`` are the event ids seen, in order."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.local_port = self.sock.getsockname()[1]
        self.ids: list[int] = []
        self.sock.sendall(
            f"GET /sdk/v1/stream?environment={ENV} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        data = b""
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                data += chunk
                while b"\n\n" in data:
                    frame, data = data.split(b"\n\n", 1)
                    for line in frame.split(b"\n"):
                        if line.startswith(b"id: "):
                            self.ids.append(int(line[4:]))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _server_socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server side of 127.0.0.1:client_port -> 127.0.0.1:server_port."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            return fields[9]
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _owner(root: int, inode: str) -> int | None:
    """The process under ``root`` holding the socket ``inode``."""
    target = f"socket:[{inode}]"
    for pid in _descendants(root):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


@pytest.fixture
def two_workers(sqlite_url: str) -> Iterator[tuple[Deployment, int, int]]:
    """(deployment, port, pid) of a ``flagrail serve --workers 2`` with ``checkout``."""
    d = Deployment(sqlite_url)
    d.create_flag("checkout")
    port = free_port()
    flagrail = Path(sys.executable).with_name("flagrail")
    env = {
        **os.environ,
        "FLAGRAIL_SCHEDULER": "false",
        "FLAGRAIL_HEARTBEAT_INTERVAL": "1",
        "FLAGRAIL_WEBHOOK_WORKER": "false",
    }
    proc = subprocess.Popen(
        [str(flagrail), "serve", "--workers", "2", "--database-url", sqlite_url,
         "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def healthy() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        return False

    try:
        wait_for(healthy, 60, "flagrail serve --workers 2")
        wait_for(lambda: len(_descendants(proc.pid)) >= 2, 30, "two worker processes")
        yield d, port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        d.close()


def test_serve_workers__kill_through_one_worker__reaches_streams_on_both(
    two_workers: tuple[Deployment, int, int],
) -> None:
    """Streams on each of two workers all get a kill made through either worker."""
    d, port, root = two_workers
    streams: list[RawStream] = []
    owners: dict[int, list[RawStream]] = {}
    try:
        while len(owners) < 2:
            assert len(streams) < MAX_STREAMS, f"all {len(streams)} streams on one worker"
            # Connections in bursts, as from a fleet: one at a time, a worker that is idle
            # in accept() can win every race on a busy machine.
            batch = [RawStream(port, d.client_token) for _ in range(BURST)]
            streams.extend(batch)
            for stream in batch:
                wait_for(lambda s=stream: s.ids, 15, "the stream's first snapshot")
                inode = _server_socket_inode(port, stream.local_port)
                assert inode is not None
                pid = wait_for(lambda i=inode: _owner(root, i), 10, "the stream's worker")
                owners.setdefault(pid, []).append(stream)
        before = d.store.get_environment(ENV).version
        r = httpx.post(
            f"http://127.0.0.1:{port}/admin/flags/checkout/kill",
            headers={"Authorization": f"Bearer {d.admin}"},
            json={"reason": "workers drill", "environments": [ENV]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        after = d.store.get_environment(ENV).version
        assert after > before
        for pid, held in owners.items():
            for stream in held:
                wait_for(lambda s=stream: max(s.ids) >= after, 10, f"a stream on worker {pid}")
    finally:
        for stream in streams:
            stream.close()
