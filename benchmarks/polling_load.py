"""Is a kill ever stuck behind polling? SDK ETag pollers and writers against one server.

The server (``flagrail serve`` in a subprocess, PostgreSQL of the benchmark's own, or
SQLite) and the load (this script: poller processes in ``--poller`` mode, the writer
in the driver) are separate processes. The load is open-loop: every poller polls on
its own schedule whatever the server's latency, so a slow server is not spared.

* **pollers**: P simulated SDK instances (default 1,000), each ``GET
  /sdk/v1/snapshot?environment=production`` once per interval (default 5 s) with
  ``If-None-Match`` of the ETag it holds; their start times are spread over the
  interval. Latency of each poll by status (304 and 200);
* **writers**: W writes per second (default 10), kills and unkills through the admin
  API, in the ``staging`` environment by default (so the pollers' ETags stay valid
  and their polls are 304s; ``--write-env production`` makes every poll after a
  write a 200). Latency from the request's send to its answer.

Targets (issue #20): with 1,000 pollers at one poll per 5 s and 10 writes/s, a kill's
p99 <= 50 ms and a 304's p99 <= 20 ms.

    .venv/bin/python benchmarks/polling_load.py [--pollers 1000] [--interval 5]
        [--writes 10] [--duration 30] [--warmup 5] [--poller-procs 2]
        [--database postgres|sqlite] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

POLL_ENV = "production"
WRITE_FLAG = "checkout"


# ------------------------------------------------------------------ poller mode
async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, str | None]:
    """One HTTP/1.1 request on a kept-alive connection: (status, ETag). The body is
    read and dropped (snapshot answers carry Content-Length)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    etag = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"etag":
            etag = value.strip().decode("latin-1")
    if length:
        await reader.readexactly(length)
    return status, etag


async def pollers(url: str, token: str, count: int, interval: float, until: float) -> None:
    """``count`` pollers, open-loop, until monotonic ``until``; prints one JSON line of
    latencies (ms) by status, and transport errors.

    Each poller is one kept-alive connection (as an SDK process holds one) driven by a
    few lines of raw HTTP/1.1 on asyncio streams: an HTTP client library here cost
    more CPU per poll than the server answering it, and on shared cores the benchmark
    then measured its own client."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    results: dict[str, list[float]] = {}
    errors = 0
    started = time.monotonic()

    async def one(i: int) -> None:
        nonlocal errors
        etag: str | None = None
        at = started + interval * i / count
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while at < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            request = (
                f"GET /sdk/v1/snapshot?environment={POLL_ENV} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token}\r\n"
                + (f"If-None-Match: {etag}\r\n" if etag else "")
                + "\r\n"
            ).encode()
            sent = time.monotonic()
            try:
                # A kept-alive connection the server closed while idle (uvicorn's
                # keep-alive timeout is 5 s, the poll interval here) is reopened and the
                # poll sent again, as an HTTP client library does; timed from the first
                # send.
                for attempt in (0, 1):
                    reused = conn is not None
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                    try:
                        status, new_etag = await asyncio.wait_for(_request(*conn, request), 30)
                        break
                    except (OSError, asyncio.IncompleteReadError):
                        conn[1].close()
                        conn = None
                        if not reused or attempt:
                            raise
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                if conn is not None:
                    conn[1].close()
                conn = None
            else:
                elapsed = (time.monotonic() - sent) * 1000
                results.setdefault(str(status), []).append(elapsed)
                etag = new_etag or etag
            at += interval
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(one(i) for i in range(count)))
    sys.stdout.write(json.dumps({"latencies": results, "errors": errors}) + "\n")


# ------------------------------------------------------------------ driver
def p99(values: list[float]) -> float:
    """The 99th percentile (inclusive method); the value itself for a single sample."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": p99(values),
        "max": max(values),
    }


class Database:
    """A PostgreSQL database of the benchmark's own (created, then dropped), or SQLite."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.name = f"flagrail_poll_{uuid.uuid4().hex[:10]}"
        if kind == "postgres":
            self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.name}"
            self.admin(f'CREATE DATABASE "{self.name}"')
        else:
            self.url = f"sqlite:///{tmp}/{self.name}.db"

    @staticmethod
    def admin(sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="test", autocommit=True
        ) as conn:
            conn.execute(sql)

    def drop(self) -> None:
        if self.kind == "postgres":
            self.admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def seed(db: str, flags: int) -> tuple[str, str]:
    """Schema, two environments, ``flags`` flags; returns (admin token, client token)."""
    from flags.model import StateChange
    from flags.store.schema import upgrade
    from flags.store.sql import SqlFlagStore

    upgrade(db)
    store = SqlFlagStore(db)
    try:
        existing = {e.name for e in store.list_environments()}
        for env in (POLL_ENV, "staging"):
            if env not in existing:
                store.create_environment(env, actor="bench")
        for i in range(flags):
            key = WRITE_FLAG if i == 0 else f"flag-{i:03d}"
            store.create_flag(key, actor="bench")
            store.update_state(key, POLL_ENV, StateChange(enabled=True, rollout=50), actor="bench")
        _i, admin = store.create_token("bench-admin", "admin", None, actor="bench")
        _i, client = store.create_token("bench-sdk", "client", [POLL_ENV], actor="bench")
    finally:
        store.close()
    return admin, client


async def writer(
    url: str, token: str, env: str, rate: float, start: float, until: float
) -> tuple[list[float], int]:
    """Kills/unkills at ``rate`` per second, open-loop, from ``start`` to ``until``."""
    latencies: list[float] = []
    failures = 0
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

        async def one(n: int) -> None:
            nonlocal failures
            sent = time.monotonic()
            try:
                response = await client.post(
                    f"/admin/flags/{WRITE_FLAG}/{'kill' if n % 2 == 0 else 'unkill'}",
                    json={"reason": "polling load", "environments": [env]},
                )
            except httpx.HTTPError:
                failures += 1
                return
            if response.status_code != 200:
                failures += 1
                return
            if sent >= start:
                latencies.append((time.monotonic() - sent) * 1000)

        tasks = []
        n = 0
        at = time.monotonic()
        while at < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            at += 1 / rate
        await asyncio.gather(*tasks)
    return latencies, failures


def run(args: argparse.Namespace) -> dict[str, Any]:
    from flags.testing.redis_server import free_port

    tmp = Path(tempfile.mkdtemp(prefix="flagrail-poll-"))
    database = Database(args.database, tmp)
    server: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[str]] = []
    try:
        admin, token = seed(database.url, args.flags)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            str(Path(sys.executable).with_name("flagrail")), "serve",
            "--database-url", database.url, "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
        if args.workers:
            command += ["--workers", str(args.workers)]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # a loaded machine starts slowly
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        begin = time.monotonic()
        measure_from = begin + args.warmup
        until = measure_from + args.duration
        share = [
            args.pollers // args.poller_procs + (1 if i < args.pollers % args.poller_procs else 0)
            for i in range(args.poller_procs)
        ]
        for count in share:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--poller",
                        url,
                        token,
                        str(count),
                        str(args.interval),
                        str(until),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        kills, write_failures = asyncio.run(
            writer(url, admin, args.write_env, args.writes, measure_from, until)
        )
        polls: dict[str, list[float]] = {}
        poll_errors = 0
        for proc in procs:
            out, _ = proc.communicate(timeout=args.duration + args.warmup + 120)
            data = json.loads(out.strip().splitlines()[-1])
            poll_errors += data["errors"]
            for status, values in data["latencies"].items():
                polls.setdefault(status, []).extend(values)
        return {
            "pollers": args.pollers,
            "interval": args.interval,
            "writes_per_s": args.writes,
            "write_env": args.write_env,
            "duration": args.duration,
            "database": args.database,
            "workers": args.workers or 1,
            "kill": summary(kills),
            "write_failures": write_failures,
            "poll_304": summary(polls.pop("304", [])),
            "poll_200": summary(polls.pop("200", [])),
            "poll_other": {k: len(v) for k, v in polls.items()},
            "poll_errors": poll_errors,
        }
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        database.drop()


def report(r: dict[str, Any]) -> None:
    def cell(s: dict[str, Any]) -> str:
        if not s["n"]:
            return "-"
        return f"{s['n']:,}: {s['p50']:,.1f} / {s['p99']:,.1f} / {s['max']:,.1f}"

    print(
        f"\nPolling load: {r['pollers']:,} ETag pollers (one poll per {r['interval']:g} s each), "
        f"{r['writes_per_s']:g} kills/unkills per s in {r['write_env']}, {r['duration']:g} s "
        f"measured, {r['database']}, {r['workers']} server worker(s). Count: p50 / p99 / max, ms."
    )
    kill_ok = r["kill"]["n"] and r["kill"]["p99"] <= 50
    poll_ok = r["poll_304"]["n"] and r["poll_304"]["p99"] <= 20
    print("| what | count: p50 / p99 / max | target |")
    print("|---|---:|---:|")
    print(f"| kill | {cell(r['kill'])} | p99 <= 50: {'met' if kill_ok else 'MISSED'} |")
    print(f"| 304 poll | {cell(r['poll_304'])} | p99 <= 20: {'met' if poll_ok else 'MISSED'} |")
    print(f"| 200 poll | {cell(r['poll_200'])} | - |")
    print(
        f"(failed writes {r['write_failures']}, poll transport errors {r['poll_errors']}, "
        f"other statuses {r['poll_other'] or 'none'})"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--poller":
        url, token, count, interval, until = sys.argv[2:7]
        with contextlib.suppress(ImportError):  # the server's loop, when installed
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(pollers(url, token, int(count), float(interval), float(until)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    parser.add_argument("--writes", type=float, default=10.0, help="kills/unkills per second")
    parser.add_argument("--write-env", default="staging", choices=["staging", POLL_ENV])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--poller-procs", type=int, default=2)
    parser.add_argument("--flags", type=int, default=50, help="flags in the snapshot")
    parser.add_argument("--workers", type=int, default=0, help="flagrail serve --workers N")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.writes <= 0 or args.pollers < args.poller_procs or args.interval <= 0:
        parser.error("--writes and --interval must be > 0, --pollers >= --poller-procs")
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
