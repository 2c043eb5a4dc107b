"""How fast a kill reaches every SDK process: over Redis, over SSE, and by polling.

For each path: a real server (``flagrail serve`` in a subprocess, SQLite in a temp
directory or, with ``--database postgres``, a PostgreSQL database of the run's own; a
throwaway redis-server for the Redis path), 16 SDK processes (this
script in ``--worker`` mode), then kills and unkills one after the other through
the admin API. Each change is awaited in all 16 processes before the next.

The figure users feel, and the one the targets judge, is **end to end**: from the
moment the kill request was sent to the moment a process applied the change (its
``on_change``; ``time.monotonic()``, one clock for every process on Linux). It
includes the server's commit. Beside it:

* **every process**: per change, from the send to the *last* of the processes
  applying it (the kill is in force everywhere);
* **after the 200**: from the API's 200 reaching the caller to the process
  applying the change, signed (a change applied before the 200 arrived is
  negative; the server publishes right after its commit, before it answers), with
  the share of applications that came before the 200.

    .venv/bin/python benchmarks/propagation.py [--processes 16] [--changes 200]
        [--poll-changes 20] [--poll-interval 1.0] [--paths redis,redis-signed,sse,poll]
        [--gap MS] [--database sqlite|postgres] [--json]

``redis`` is the default Redis mode (no ``FLAGRAIL_SIGNING_KEY``): a message is a
hint and each SDK fetches the snapshot (ETag'd) on it; ``redis-signed`` sets a
signing key, so SDKs apply the verified change from the message itself.

For reference: Unleash SDKs poll every 15 s by default (their documented
``refresh_interval``), so a kill takes up to 15 s there plus the server's cache.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ENV = "production"
FLAG = "checkout"


# ------------------------------------------------------------------ worker mode
def worker(url: str, token: str, redis_url: str | None, poll: float) -> None:
    from flags import FlagClient

    lock = threading.Lock()

    def emit(**data: Any) -> None:
        with lock:
            sys.stdout.write(json.dumps(data) + "\n")
            sys.stdout.flush()

    client = FlagClient(url, token, ENV, redis_url=redis_url, poll_interval=poll)

    def changed(c: FlagClient, snapshot: Any) -> None:
        t = time.monotonic()
        state = snapshot.flags.get(FLAG)
        emit(v=snapshot.version, killed=bool(state and state.killed), t=t, src=c.stats()["source"])

    client.on_change(changed)
    client.wait_until_ready(30)
    deadline = time.monotonic() + 30
    expect = os.environ.get("BENCH_EXPECT", "poll")
    while client.stats()["source"] != expect and time.monotonic() < deadline:
        time.sleep(0.01)
    emit(ready=True, src=client.stats()["source"], v=client.version)
    sys.stdin.read()
    client.close()


# ------------------------------------------------------------------ driver
class Server:
    def __init__(self, db: str, port: int, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        flagrail = Path(sys.executable).with_name("flagrail")
        self.proc = subprocess.Popen(
            [
                str(flagrail),
                "serve",
                "--database-url",
                db,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()  # not left running when the caller never gets this object
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Workers:
    def __init__(
        self, n: int, url: str, token: str, redis_url: str | None, poll: float, env: dict[str, str]
    ) -> None:
        self.events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.procs = []
        for i in range(n):
            args = [sys.executable, __file__, "--worker", url, token, str(poll)]
            if redis_url:
                args.append(redis_url)
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put((i, json.loads(line)))

    def wait(self, predicate: Any, timeout: float) -> dict[int, dict[str, Any]]:
        """The first event per worker matching ``predicate``, for all of them."""
        got: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"only {len(got)}/{len(self.procs)} workers saw it")
            try:
                i, event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if i not in got and predicate(event):
                got[i] = event
        return got

    def stop(self) -> None:
        for p in self.procs:
            if p.stdin:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def run_path(path: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from polling_load import Database  # benchmarks/: this script's own folder

    from flags.settings import Settings  # noqa: F401  (imports the package early)
    from flags.store.schema import upgrade
    from flags.store.sql import SqlFlagStore
    from flags.testing.redis_server import RedisServer, free_port

    database = Database(args.database, tmp)
    db = database.url
    upgrade(db)
    store = SqlFlagStore(db)
    if ENV not in {e.name for e in store.list_environments()}:
        store.create_environment(ENV, actor="bench")
    store.create_flag(FLAG, actor="bench")
    from flags.model import StateChange

    store.update_state(FLAG, ENV, StateChange(enabled=True, rollout=100), actor="bench")
    _i, admin = store.create_token("bench-admin", "admin", None, actor="bench")
    _i, client_token = store.create_token("bench-sdk", "client", [ENV], actor="bench")
    store.close()

    redis = None
    server_env: dict[str, str] = {}
    worker_env: dict[str, str] = {}
    if path in ("redis", "redis-signed"):
        redis = RedisServer().start()
        server_env["FLAGRAIL_REDIS_URL"] = redis.url
        worker_env["BENCH_EXPECT"] = "redis"
    if path == "redis-signed":
        # Signed messages: SDKs apply the change from Redis, no snapshot fetch.
        server_env["FLAGRAIL_SIGNING_KEY"] = "propagation-bench-signing-key"
    if path == "sse":
        worker_env["BENCH_EXPECT"] = "stream"
    if path == "poll":
        server_env["FLAGRAIL_MAX_STREAMS"] = "0"
        worker_env["BENCH_EXPECT"] = "poll"
    changes = args.poll_changes if path == "poll" else args.changes
    poll = args.poll_interval if path == "poll" else 5.0
    server = Server(db, free_port(), server_env)
    workers = Workers(
        args.processes, server.url, client_token, redis.url if redis else None, poll, worker_env
    )
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"})
    from_send: list[float] = []  # per process and change: send -> applied
    every: list[float] = []  # per change: send -> applied in the last process
    from_200: list[float] = []  # per process and change: the 200 -> applied, signed
    sources: set[str] = set()
    try:
        ready = workers.wait(lambda e: e.get("ready"), 60)
        ready_sources = {e["src"] for e in ready.values()}
        if len(ready_sources) != 1:
            print(f"warning: {path} workers started on {ready_sources}", file=sys.stderr)
        for n in range(changes):
            killed = n % 2 == 0
            sent = time.monotonic()
            r = http.post(
                f"/admin/flags/{FLAG}/{'kill' if killed else 'unkill'}",
                json={"reason": "bench", "environments": [ENV]},
            )
            ok_at = time.monotonic()
            r.raise_for_status()
            seen = workers.wait(lambda e, k=killed: "t" in e and e["killed"] is k, 60)
            for e in seen.values():
                from_send.append((e["t"] - sent) * 1000)
                from_200.append((e["t"] - ok_at) * 1000)
                sources.add(e["src"])
            every.append((max(e["t"] for e in seen.values()) - sent) * 1000)
            if args.gap > 0:  # let the fleet's reports and backups after it settle
                time.sleep(args.gap / 1000)
    finally:
        http.close()
        workers.stop()
        server.stop()
        if redis is not None:
            redis.close()
        database.drop()
    return {
        "path": path,
        "changes": changes,
        "samples": len(from_send),
        "p50": statistics.median(from_send),
        "p99": p99(from_send),
        "max": max(from_send),
        "every_p50": statistics.median(every),
        "every_p99": p99(every),
        "after_200_p50": statistics.median(from_200),
        "after_200_p99": p99(from_200),
        "before_200_share": sum(1 for v in from_200 if v < 0) / len(from_200),
        "sources": sorted(sources),
        "poll": poll if path == "poll" else None,
    }


def p99(values: list[float]) -> float:
    """The 99th percentile (inclusive method); the value itself for a single sample."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


# path: (the figure judged, its p99 bound in ms). Issue #20: a kill applied in every
# process within 20 ms of its send, over signed Redis messages and over SSE. Issue #14:
# Redis as a hint (the default without a signing key) within 50 ms of the API's 200.
TARGETS = {
    "redis": ("after_200_p99", 50.0),
    "redis-signed": ("p99", 20.0),
    "sse": ("p99", 20.0),
}
LABELS = {
    "redis": "Redis, hint-only (fetch on hint)",
    "redis-signed": "Redis, signed changes",
    "sse": "SSE stream",
    "poll": "ETag polling",
}


def report(results: list[dict[str, Any]], processes: int) -> None:
    """Print the results as a Markdown table, end-to-end figures first."""
    print(
        f"\nKill/unkill propagation to {processes} SDK processes, ms. End to end: from the "
        "kill request's send to the change applied in a process (p50, p99, max over every "
        "process and change); every process: per change, to the change applied in the last "
        "process (p99 over the changes). After the 200: from the API's answer to the change "
        "applied, signed (negative: applied before the answer arrived)."
    )
    header = [
        "path",
        "changes",
        "samples",
        "end to end p50",
        "p99",
        "max",
        "every process p99",
        "after the 200 p50 / p99",
        "applied before the 200",
        "target (p99)",
    ]
    rows = []
    for r in results:
        label = LABELS[r["path"]]
        if r["poll"] is not None:
            label += f" ({r['poll']:g} s)"
        verdict = "-"
        if r["path"] in TARGETS:
            figure, bound = TARGETS[r["path"]]
            where = "end to end" if figure == "p99" else "after the 200"
            verdict = f"{where} <= {bound:g}: {'met' if r[figure] <= bound else 'MISSED'}"
        rows.append(
            [
                label,
                f"{r['changes']:,}",
                f"{r['samples']:,}",
                f"{r['p50']:,.1f}",
                f"{r['p99']:,.1f}",
                f"{r['max']:,.1f}",
                f"{r['every_p99']:,.1f}",
                f"{r['after_200_p50']:,.1f} / {r['after_200_p99']:,.1f}",
                f"{r['before_200_share']:.0%}",
                verdict,
            ]
        )
    rows.append(["Unleash SDK (default)", "-", "-", "-", "up to 15,000", "-", "-", "-", "-", "-"])
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")
    print("(Unleash: its SDKs poll every 15 s by default, the documented refresh_interval.)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, token, poll = sys.argv[2], sys.argv[3], float(sys.argv[4])
        worker(url, token, sys.argv[5] if len(sys.argv) > 5 else None, poll)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--changes", type=int, default=200, help="kills+unkills (Redis, SSE)")
    parser.add_argument("--poll-changes", type=int, default=20, help="kills+unkills (polling)")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--paths", default="redis,redis-signed,sse,poll")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="ms to wait after a change reached every process before sending the next "
        "(default 0: back to back, so each change meets the previous one's instance "
        "reports and backup writes, sent 20-80 ms after it; 200: isolated kills)",
    )
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="the server's database (postgres: a database of the run's own on "
        "127.0.0.1:5432, created and dropped)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="flagrail-prop-"))
    results = []
    for path in args.paths.split(","):
        print(f"running {path} ...", file=sys.stderr)
        results.append(run_path(path, args, tmp))

    if args.json:
        print(json.dumps({"processes": args.processes, "results": results}, indent=2))
    else:
        report(results, args.processes)
    for r in results:
        print(f"{r['path']}: changes applied via {r['sources']}", file=sys.stderr)


if __name__ == "__main__":
    main()
