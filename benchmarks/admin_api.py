"""Admin API latency: the kill switch, and a page of history out of a million rows.

For each database (SQLite file, PostgreSQL database of its own, created and
dropped), this runs a real flagrail server (``flagrail serve``: one uvicorn
worker, a process of its own) and measures from this process over a keep-alive
HTTP connection, one request at a time, end to end (from the request's send to
its response read, so the figures include the network stack and the client):

* kill latency: ``POST /admin/flags/{key}/kill`` with no environments (the
  emergency path: all four environments, one transaction, four history rows),
  1,000 times, alternating with as many ``/unkill`` (measured apart);
* with ``--webhook``: the kills and unkills again once a webhook subscription
  exists (all state events, to a receiver in this process that answers 204), so
  the kill path's cost includes the delivery worker that every commit wakes;
* history page: one page of 100 rows when the history holds 1,000,000 rows
  (bulk-inserted server-side before the server starts): the newest page, pages
  filtered by flag, by environment + action and by time, the per-flag route,
  and a cursor page half-way down.

Targets on a 2-core machine: kill p99 <= 20 ms on PostgreSQL; a history page
<= 20 ms. SQLite and PostgreSQL are printed side by side, from the same run.

Usage::

    .venv/bin/python benchmarks/admin_api.py            # 1,000 kills, 1,000,000 rows
    .venv/bin/python benchmarks/admin_api.py --quick    # 200 kills, 100,000 rows
    .venv/bin/python benchmarks/admin_api.py --backends sqlite
    .venv/bin/python benchmarks/admin_api.py --quick --webhook   # + kills with a subscription

The machine's ``test`` database is only connected to, to create and drop the
benchmark's own database.
"""

from __future__ import annotations

import argparse
import http.server
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from flags.history import encode_cursor
from flags.store.schema import upgrade
from flags.store.sql import SqlFlagStore

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
KILL_FLAG = "bench.kill"
HISTORY_FLAGS = 500  # bulk rows spread over flag.0 .. flag.499
ENVS = ("development", "staging", "beta", "production")
TARGET_MS = 20.0
SPACING = 0.06  # seconds between the spaced kills of --webhook
QUIET = ("--log-level", "warning")  # no access log


@dataclass
class Sizes:
    kills: int
    rows: int
    page_repeats: int
    warmup: int = 20


FULL = Sizes(kills=1_000, rows=1_000_000, page_repeats=200)
QUICK = Sizes(kills=200, rows=100_000, page_repeats=50)


@dataclass
class Measured:
    """Milliseconds per request, by row label."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, ms: float) -> None:
        self.samples.setdefault(label, []).append(ms)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ databases
@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="flagrail-bench-") as tmp:
        yield f"sqlite:///{tmp}/flagrail.db"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A database of the benchmark's own on the machine's PostgreSQL, dropped afterwards."""
    import psycopg

    name = f"flagrail_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(**PG, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with psycopg.connect(**PG, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_available() -> bool:
    try:
        with socket.create_connection((PG["host"], PG["port"]), timeout=0.5):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------ bulk history
# Server-side generation: ids 1..N, one row per second going back from now, 20 actors,
# the kill/state actions, flags flag.0 .. flag.499 in the four environments, and
# before/after states the size of real ones.
STATE = (
    '{"enabled": %s, "rollout": 50, "tenants_on": ["acme", "globex"], "tenants_off": [], '
    '"killed": %s, "kill_reason": null, "killed_at": null, "killed_by": null, "version": 7}'
)
BEFORE, AFTER = STATE % ("true", "false"), STATE % ("true", "true")

PG_BULK = f"""
INSERT INTO history (at, actor, action, flag, environment, before, after, reason, request_id,
                     env_version)
SELECT now() - make_interval(secs => :rows - n),
       'actor-' || (n % 20),
       (ARRAY['state.update', 'kill', 'unkill', 'state.update'])[1 + n % 4],
       'flag.' || (n % {HISTORY_FLAGS}),
       (ARRAY['development', 'staging', 'beta', 'production'])[1 + (n / 7) % 4],
       CAST(:before AS json), CAST(:after AS json), 'bulk', md5(n::text), n
FROM generate_series(1, :rows) AS n
"""

SQLITE_BULK = f"""
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < :rows)
INSERT INTO history (at, actor, action, flag, environment, before, after, reason, request_id,
                     env_version)
SELECT strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || (:rows - n) || ' seconds') || '.000000',
       'actor-' || (n % 20),
       CASE n % 4 WHEN 1 THEN 'kill' WHEN 2 THEN 'unkill' ELSE 'state.update' END,
       'flag.' || (n % {HISTORY_FLAGS}),
       CASE (n / 7) % 4 WHEN 0 THEN 'development' WHEN 1 THEN 'staging'
                        WHEN 2 THEN 'beta' ELSE 'production' END,
       :before, :after, 'bulk', hex(randomblob(16)), n
FROM seq
"""


def bulk_history(url: str, rows: int) -> float:
    """Insert ``rows`` history rows in one statement; returns the seconds it took."""
    engine = create_engine(url)
    started = time.perf_counter()
    try:
        with engine.begin() as conn:
            bulk = PG_BULK if engine.dialect.name == "postgresql" else SQLITE_BULK
            conn.execute(text(bulk), {"rows": rows, "before": BEFORE, "after": AFTER})
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return time.perf_counter() - started


def prepare(url: str, rows: int) -> tuple[str, float]:
    """Migrate, add an admin token and the flags, bulk-load history. Returns the token."""
    upgrade(url)
    store = SqlFlagStore(url)
    try:
        _info, token = store.create_token("bench-admin", "admin", None, actor="bench")
        store.create_flag(KILL_FLAG, kind="kill-switch", actor="bench")
        store.create_flag("flag.42", actor="bench")
    finally:
        store.close()
    return token, bulk_history(url, rows)


# ------------------------------------------------------------------ server
def flagrail_command() -> list[str]:
    script = Path(sys.executable).with_name("flagrail")
    if script.exists():
        return [str(script)]
    found = shutil.which("flagrail")
    if found:
        return [found]
    return [sys.executable, "-c", "from api.cli import main; main()"]


@contextmanager
def running_server(url: str, server_env: dict[str, str] | None = None) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAGRAIL_")}
    env.update(server_env or {})
    proc = subprocess.Popen(
        [*flagrail_command(), "serve", "--database-url", url, "--port", str(port), *QUIET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"flagrail serve exited: {err.strip()[-500:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("flagrail serve did not become healthy in 60s")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


# ------------------------------------------------------------------ measurements
def timed(client: httpx.Client, send: Callable[[], httpx.Response]) -> float:
    started = time.perf_counter()
    response = send()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} -> {response.status_code} {response.text}")
    return elapsed


def kill_rounds(
    client: httpx.Client, sizes: Sizes, out: Measured, label: str, spacing: float = 0.0
) -> None:
    """Kill/unkill pairs through the API, measured apart as ``kill<label>`` and
    ``unkill<label>``; with ``spacing``, each request that many seconds after the last
    (changes as they come in an incident, one at a time; without, a flood)."""
    path = f"/admin/flags/{KILL_FLAG}"
    body = {"reason": "benchmark"}
    for i in range(sizes.warmup + sizes.kills):
        time.sleep(spacing)
        kill_ms = timed(client, lambda: client.post(f"{path}/kill", json=body))
        time.sleep(spacing)
        unkill_ms = timed(client, lambda: client.post(f"{path}/unkill", json=body))
        if i >= sizes.warmup:
            out.add(f"kill{label}", kill_ms)
            out.add(f"unkill{label}", unkill_ms)
    checked = client.get(path).json()["environments"]
    assert all(not state["killed"] for state in checked.values())


def measure_kills(client: httpx.Client, sizes: Sizes, out: Measured) -> None:
    kill_rounds(client, sizes, out, " (4 environments)")


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that reads the body and answers 204."""

    received = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        type(self).received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def webhook_receiver() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def measure_kills_with_webhook(client: httpx.Client, sizes: Sizes, out: Measured) -> None:
    """Spaced kills without a subscription, then with one receiving every state event
    (back to back too, for the flood): the difference is webhooks' cost on the path."""
    kill_rounds(client, sizes, out, ", spaced, no webhook", SPACING)
    with webhook_receiver() as url:
        created = client.post("/admin/webhooks", json={"url": url, "events": ["state.*"]})
        if created.status_code != 201:
            raise RuntimeError(f"webhook subscription: {created.status_code} {created.text}")
        before = _Receiver.received
        kill_rounds(client, sizes, out, ", spaced, 1 webhook subscription", SPACING)
        kill_rounds(client, sizes, out, " back to back, 1 webhook subscription")
        expected = 16 * (sizes.warmup + sizes.kills)  # 4 environments x 2 x 2 rounds
        deadline = time.monotonic() + 60
        while _Receiver.received - before < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        out.notes["webhook deliveries"] = f"{_Receiver.received - before:,} of {expected:,}"


def history_pages(rows: int) -> dict[str, str]:
    deep = encode_cursor(rows // 2)
    return {
        "newest page": "/admin/history?limit=100",
        "filter flag": "/admin/history?limit=100&flag=flag.42",
        "filter environment+action": "/admin/history?limit=100&environment=production&action=kill",
        "filter since 1h": "/admin/history?limit=100&since=1h",
        "filter until half-way back": f"/admin/history?limit=100&until={rows // 2}s",
        "per-flag route": "/admin/flags/flag.42/history?limit=100",
        f"cursor at row {rows // 2:,}": f"/admin/history?limit=100&cursor={deep}",
    }


def measure_history(client: httpx.Client, sizes: Sizes, out: Measured) -> None:
    for label, path in history_pages(sizes.rows).items():
        first = client.get(path)
        if first.status_code != 200 or len(first.json()["items"]) != 100:
            raise RuntimeError(f"{path}: {first.status_code} {first.text[:200]}")
        for i in range(sizes.warmup + sizes.page_repeats):
            ms = timed(client, lambda path=path: client.get(path))
            if i >= sizes.warmup:
                out.add(f"history: {label}", ms)


def run_backend(
    name: str,
    sizes: Sizes,
    server_env: dict[str, str] | None = None,
    *,
    webhook: bool = False,
) -> Measured:
    opener = sqlite_database if name == "sqlite" else postgres_database
    out = Measured()
    with opener() as url:
        token, load_seconds = prepare(url, sizes.rows)
        out.notes["bulk load"] = f"{sizes.rows:,} rows in {load_seconds:.1f} s"
        with (
            running_server(url, server_env) as base,
            httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as client,
        ):
            measure_kills(client, sizes, out)
            if webhook:
                measure_kills_with_webhook(client, sizes, out)
            measure_history(client, sizes, out)
    return out


# ------------------------------------------------------------------ report
def versions() -> str:
    parts = [f"Python {platform.python_version()}", f"SQLite {sqlite3.sqlite_version}"]
    try:
        import psycopg

        with psycopg.connect(**PG, connect_timeout=2) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            parts.append(f"PostgreSQL {row[0].split()[0] if row else '?'}")
    except Exception:  # only a label for the report
        parts.append("PostgreSQL not reachable")
    return ", ".join(parts)


def report(results: dict[str, Measured], sizes: Sizes, load: tuple[float, float]) -> None:
    names = list(results)
    labels = list(dict.fromkeys(label for m in results.values() for label in m.samples))
    print()
    print(
        f"flagrail admin API, {os.cpu_count()} CPUs, {platform.machine()}, {versions()}; "
        f"{sizes.kills:,} kills, history of {sizes.rows:,} rows, "
        f"{sizes.page_repeats} fetches per page; end to end, as the caller sees it: from the "
        "request's send to its response read in another process, one request at a time, "
        "keep-alive; "
        f"load average {load[0]:.2f} before, {load[1]:.2f} after (other work on the machine "
        "shows in the p99)"
    )
    header = ["request"] + [f"{n} p50 ms" for n in names] + [f"{n} p99 ms" for n in names]
    rows = []
    for label in labels:
        cells = [label]
        for stat in (50, 99):
            for n in names:
                values = results[n].samples.get(label)
                cells.append(f"{percentile(values, stat):.2f}" if values else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for cells in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    print()
    for n in names:
        for key, note in results[n].notes.items():
            print(f"{n}: {key}: {note}")
    print()
    checks = []
    if "postgres" in results:
        kill_p99 = percentile(results["postgres"].samples["kill (4 environments)"], 99)
        checks.append(("kill p99 on PostgreSQL", kill_p99))
    for n in names:
        worst = max(
            percentile(v, 99) for k, v in results[n].samples.items() if k.startswith("history")
        )
        checks.append((f"slowest history page p99 on {n}", worst))
    for what, value in checks:
        verdict = "meets" if value <= TARGET_MS else "MISSES"
        print(f"{what}: {value:.2f} ms ({verdict} the {TARGET_MS:g} ms target)")
    print(
        "(means: "
        + "; ".join(
            f"{n} kill {statistics.fmean(results[n].samples['kill (4 environments)']):.2f} ms"
            for n in names
        )
        + ")"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 kills, 100,000 history rows")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the measured server (e.g. FLAGRAIL_WEBHOOK_WORKER=false); repeatable",
    )
    parser.add_argument(
        "--webhook",
        action="store_true",
        help="also measure the kills with one webhook subscription (a local receiver)",
    )
    args = parser.parse_args()
    server_env = {}
    for item in args.server_env:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("FLAGRAIL_"):
            parser.error(f"--server-env: expected FLAGRAIL_NAME=VALUE, got {item!r}")
        server_env[name] = value
    sizes = QUICK if args.quick else FULL
    results: dict[str, Measured] = {}
    load_before = os.getloadavg()[0]
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if name == "postgres" and not postgres_available():
            print("postgres: no server on 127.0.0.1:5432; skipped", file=sys.stderr)
            continue
        print(f"{name}: preparing and measuring ...", file=sys.stderr, flush=True)
        results[name] = run_backend(name, sizes, server_env, webhook=args.webhook)
    if not results:
        raise SystemExit("no backend measured")
    report(results, sizes, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
