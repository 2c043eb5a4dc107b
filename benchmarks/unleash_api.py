"""Requests/s and latency of ``GET /api/client/features`` with 1,000 flags, full and 304.

Runs a real flagrail server (``flagrail serve``, one uvicorn worker, a process of
its own) on a fresh database, fills it with 1,000 flags in mixed shapes, and
drives it from this process with keep-alive HTTP/1.1 connections (asyncio, raw
sockets, so the load generator costs little). Side by side, in the same run, the
same server's native SDK endpoint ``GET /sdk/v1/snapshot`` on the same flags.

No Unleash server runs here, so none is measured; the rows are what an Unleash
SDK polling flagrail costs the flagrail server.

Usage::

    .venv/bin/python benchmarks/unleash_api.py                 # SQLite and, if up, PostgreSQL
    .venv/bin/python benchmarks/unleash_api.py --seconds 5 --connections 1,16
    .venv/bin/python benchmarks/unleash_api.py --backends sqlite

PostgreSQL runs on a database of its own (created and dropped), never ``test``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flags.model import StateChange
from flags.store.schema import upgrade
from flags.store.sql import SqlFlagStore

FLAGS = 1_000
QUIET = ("--log-level", "warning")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def populate(url: str) -> str:
    """1,000 flags in mixed shapes in production; returns a production client token."""
    store = SqlFlagStore(url)
    try:
        _, token = store.create_token("bench-sdk", "client", ["production"], actor="bench")
        for i in range(FLAGS):
            key = f"flag-{i:04d}"
            store.create_flag(key, actor="bench")
            shape = i % 5
            change = {
                0: StateChange(enabled=True, rollout=100),
                1: StateChange(enabled=True, rollout=i % 100),
                2: StateChange(
                    enabled=True,
                    rollout=25,
                    tenants_on=frozenset(f"tenant-{j}" for j in range(i % 7, 40, 7)),
                    tenants_off=frozenset(f"tenant-{j}" for j in range(100, 110)),
                ),
                3: StateChange(enabled=False),
                4: StateChange(enabled=True, rollout=0, tenants_on=frozenset({"acme", "globex"})),
            }[shape]
            store.update_state(key, "production", change, actor="bench")
            if i % 50 == 0:
                store.kill(key, ["production"], reason="bench", actor="bench")
        return token
    finally:
        store.close()


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A migrated database of the benchmark's own, removed afterwards."""
    if backend == "sqlite":
        tmp = Path(tempfile.mkdtemp(prefix="flagrail-bench-"))
        try:
            url = f"sqlite:///{tmp / 'bench.db'}"
            upgrade(url)
            yield url
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    import psycopg

    name = f"flagrail_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**PG, autocommit=True, connect_timeout=5) as conn:  # type: ignore[arg-type]
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(**PG, autocommit=True, connect_timeout=5) as conn:  # type: ignore[arg-type]
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def server(url: str) -> Iterator[int]:
    """``flagrail serve`` in a subprocess; yields its port once /healthz answers."""
    port = free_port()
    flagrail = Path(sys.executable).with_name("flagrail")
    env = {**os.environ, "FLAGRAIL_SCHEDULER": "false"}
    proc = subprocess.Popen(
        [str(flagrail), "serve", "--database-url", url, "--port", str(port), *QUIET],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("flagrail serve did not come up")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def request_bytes(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def fetch_once(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await exchange(reader, writer, raw)
    finally:
        writer.close()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, dict[str, str], bytes]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


@dataclass
class Result:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: set[int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def load(port: int, raw: bytes, connections: int, seconds: float) -> Result:
    """``connections`` keep-alive connections sending ``raw`` back to back."""
    latencies: list[float] = []
    statuses: set[int] = set()

    async def worker(deadline: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                status, _, _ = await exchange(reader, writer, raw)
                latencies.append(time.perf_counter() - start)
                statuses.add(status)
        finally:
            writer.close()

    warmup = time.perf_counter() + min(1.0, seconds / 3)
    await asyncio.gather(*(worker(warmup) for _ in range(connections)))
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(worker(start + seconds) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    return Result(
        len(ordered),
        elapsed,
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        statuses,
    )


def scenarios(port: int, token: str) -> list[tuple[str, bytes, int]]:
    """(name, request, expected status): each endpoint full and conditional."""
    unleash = "/api/client/features"
    sdk = "/sdk/v1/snapshot?environment=production"
    gzip = {"Accept-Encoding": "gzip"}  # what UnleashClient (requests) sends
    out: list[tuple[str, bytes, int]] = []
    for name, path, headers in (
        ("/api/client/features gzip", unleash, {"Authorization": token, **gzip}),
        ("/api/client/features", unleash, {"Authorization": token}),
        ("/sdk/v1/snapshot (flagrail SDK)", sdk, {"Authorization": f"Bearer {token}"}),
    ):
        full = request_bytes(path, headers)
        status, answer, body = asyncio.run(fetch_once(port, full))
        if status != 200:
            print(f"  ({name}: HTTP {status}; skipped)")
            continue
        cond = request_bytes(path, {**headers, "If-None-Match": answer["etag"]})
        out.append((f"{name} full, {len(body) / 1024:.0f} KiB", full, 200))
        out.append((f"{name} 304", cond, 304))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    parser.add_argument("--connections", default="1,16", help="comma-separated concurrency")
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    conns = [int(c) for c in args.connections.split(",")]
    print(
        f"flagrail {FLAGS} flags; python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{platform.machine()}, load average {os.getloadavg()[0]:.1f} at start; "
        "server and load generator share the machine"
    )
    rows: list[tuple[str, str, int, Result]] = []
    for backend in args.backends.split(","):
        if backend == "postgres":
            try:
                socket.create_connection((PG["host"], PG["port"]), timeout=1).close()
            except OSError:
                print("(PostgreSQL not reachable: skipped)")
                continue
        with database(backend) as url:
            token = populate(url)
            with server(url) as port:
                for name, raw, expected in scenarios(port, token):
                    for c in conns:
                        result = asyncio.run(load(port, raw, c, args.seconds))
                        if result.statuses != {expected}:
                            raise SystemExit(f"{name}: got statuses {result.statuses}")
                        rows.append((backend, name, c, result))
    header = (
        f"{'database':<9} {'request':<44} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for backend, name, c, r in rows:
        print(f"{backend:<9} {name:<46} {c:>5} {r.rps:>8.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}")


if __name__ == "__main__":
    main()
