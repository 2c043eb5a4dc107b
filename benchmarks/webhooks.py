"""Webhook delivery: commit -> receiver latency at a steady rate, and what the
outbox adds to the kill path.

1. **Latency.** A real ``flagrail serve`` (a process of its own) on a PostgreSQL
   database of the benchmark's own, one ``standard`` subscription pointing at a
   local receiver (a threaded HTTP server in this process that verifies every
   delivery with ``standardwebhooks``). State changes go in through the admin API
   at a steady ``--rate`` per second (default 50) for ``--seconds`` (default 20).
   Latency per event = receiver arrival time - the event's ``timestamp`` (the
   history row's ``at``, taken inside the writing transaction, so a little before
   its commit: the figure is an upper bound). Target: p99 <= 250 ms.
2. **Kill-path cost.** In this process, on the same database: the kill path's
   history write (``flags.store.history.record_changes`` of four rows, one per
   environment, in one transaction: history and outbox rows in one CTE), against
   the bare history insert, and against the same work as three statements (lock,
   insert, outbox insert), in turn, ``--kills`` times each. The extra cost per
   change is p99(with) - p99(bare). Target: <= 1 ms p99.

Usage::

    .venv/bin/python benchmarks/webhooks.py             # 50/s for 20 s, 2,000 kill writes
    .venv/bin/python benchmarks/webhooks.py --quick     # 50/s for 5 s, 300 kill writes
    .venv/bin/python benchmarks/webhooks.py --kill-only # the kill-path cost alone

The machine's ``test`` database is only connected to, to create and drop the
benchmark's own database.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import Connection, create_engine, func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flags.store.history import HISTORY_WRITE_LOCK, record_changes
from flags.store.schema import upgrade
from flags.store.sql import SqlFlagStore
from flags.store.tables import history, webhook_outbox
from tests.webhooks.receiver import Receiver, free_port

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
FLAG = "bench.webhooks"
ENV = "production"
ENVS = ("development", "staging", "beta", "production")
LATENCY_TARGET_MS = 250.0
KILL_TARGET_MS = 1.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[index]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of the benchmark's own, dropped afterwards."""
    import psycopg

    name = f"flagrail_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**PG, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with psycopg.connect(**PG, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_server(url: str, port: int) -> Iterator[str]:
    flagrail = Path(sys.executable).with_name("flagrail")
    fd, log_name = tempfile.mkstemp(prefix="flagrail-bench-", suffix=".log")
    log = os.fdopen(fd, "wb")
    proc = subprocess.Popen(
        [
            str(flagrail),
            "serve",
            "--database-url",
            url,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "FLAGRAIL_REDIS_URL": "",
            "FLAGRAIL_SCHEDULER": "false",
            "FLAGRAIL_BOOTSTRAP_TOKEN_FILE": log_name + ".token",
        },
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"flagrail serve exited; see {log_name}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"flagrail serve did not start; see {log_name}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def measure_latency(url: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Milliseconds from each change's history ``at`` to its arrival; and how many
    changes were sent."""
    store = SqlFlagStore(url)
    try:
        store.create_flag(FLAG, actor="bench")
        _info, token = store.create_token("bench-admin", "admin", None, actor="bench")
    finally:
        store.close()
    with Receiver() as receiver, running_server(url, free_port()) as base:
        http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        sub = http.post("/admin/webhooks", json={"url": receiver.url(), "events": ["state.*"]})
        sub.raise_for_status()
        receiver.secrets["/hook"] = sub.json()["secret"]
        count = int(rate * seconds)
        start = time.monotonic()
        for n in range(count):
            # Steady pacing: each change at its slot, whatever the last one took.
            slot = start + n / rate
            pause = slot - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            answer = http.patch(
                f"/admin/flags/{FLAG}/environments/{ENV}",
                json={"enabled": True, "rollout": n % 100},
            )
            answer.raise_for_status()
        done = threading.Event()
        deadline = time.monotonic() + 30
        while len(receiver.unique()) < count and time.monotonic() < deadline:
            done.wait(0.05)
        http.close()
        got = receiver.unique()
        if not all(r.verified for r in got):
            raise SystemExit("a delivery failed standardwebhooks verification")
        lags = [
            (r.at - datetime.fromisoformat(r.payload["timestamp"]).timestamp()) * 1000 for r in got
        ]
        return lags, count


def _separate_statements(conn: Connection, batch: list[dict[str, object]]) -> None:
    """The first integration, for comparison: the shared lock, the history insert
    returning its ids and the outbox insert as three statements."""
    conn.execute(select(func.pg_advisory_xact_lock_shared(HISTORY_WRITE_LOCK)))
    ids = conn.execute(
        insert(history).returning(history.c.id),
        [{**r, "token_id": None, "token_name": None, "claimed_actor": None} for r in batch],
    ).scalars()
    conn.execute(insert(webhook_outbox), [{"history_id": i} for i in ids])


def measure_kill_path(url: str, kills: int) -> dict[str, list[float]]:
    """Per-transaction milliseconds of the kill path's history write, three ways in
    turn: the bare insert, ``record_changes`` (history and outbox in one CTE) and the
    same work as three statements."""
    engine = create_engine(url)

    def rows() -> list[dict[str, object]]:
        now = datetime.now(UTC)
        return [
            {
                "at": now,
                "actor": "bench",
                "action": "kill",
                "flag": FLAG,
                "environment": env,
                "before": {"killed": False},
                "after": {"killed": True},
                "reason": "bench",
                "request_id": None,
                "env_version": None,
            }
            for env in ENVS
        ]

    times: dict[str, list[float]] = {"bare": [], "cte": [], "separate": []}
    kinds = list(times)
    try:
        for n in range(kills * 3 + 30):
            batch = rows()
            kind = kinds[n % 3]
            t0 = time.perf_counter()
            with engine.begin() as conn:
                if kind == "cte":
                    record_changes(conn, batch)
                elif kind == "separate":
                    _separate_statements(conn, batch)
                else:
                    conn.execute(
                        insert(history),
                        [
                            {**r, "token_id": None, "token_name": None, "claimed_actor": None}
                            for r in batch
                        ],
                    )
            ms = (time.perf_counter() - t0) * 1000
            if n >= 30:  # the first few warm the pool and the plan cache
                times[kind].append(ms)
    finally:
        engine.dispose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--kills", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kill-only", action="store_true", help="skip the latency run")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.kills = 5.0, 300
    print(
        f"flagrail webhooks benchmark: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    with postgres_database() as url:
        upgrade(url)
        if not args.kill_only:
            lags, sent = measure_latency(url, args.rate, args.seconds)
            print(
                f"\ncommit -> receiver, PostgreSQL, {args.rate:g} changes/s for {args.seconds:g} s"
            )
            print(f"  delivered {len(lags)} of {sent}")
            print(
                f"  p50 {percentile(lags, 50):7.1f} ms   p99 {percentile(lags, 99):7.1f} ms   "
                f"max {max(lags):7.1f} ms   target p99 <= {LATENCY_TARGET_MS:g} ms"
            )
        times = measure_kill_path(url, args.kills)
    bare = times["bare"]
    print(f"\nkill-path history write (4 rows, one transaction), {len(bare)} each, in turn")
    labels = {
        "bare": "bare insert",
        "cte": "with outbox (one CTE)",
        "separate": "with outbox (3 statements)",
    }
    for kind, label in labels.items():
        got = times[kind]
        line = f"  {label:27} p50 {percentile(got, 50):6.2f} ms   p99 {percentile(got, 99):6.2f} ms"
        if kind != "bare":
            extra = [w - b for w, b in zip(got, bare, strict=False)]
            line += (
                f"   extra p50 {statistics.median(extra):5.2f} ms, "
                f"p99 - p99 {percentile(got, 99) - percentile(bare, 99):5.2f} ms"
            )
        print(line)
    print(f"  target: extra <= {KILL_TARGET_MS:g} ms p99")


if __name__ == "__main__":
    main()
