"""How many SSE streams one replica holds, and how fast a kill reaches the last of them.

For each topology (one replica; two replicas sharing Redis and the database) and each
stream count N: real servers (``flagrail serve`` subprocesses, a throwaway
redis-server for two replicas, a PostgreSQL database of the benchmark's own, or
SQLite), then N SSE streams opened by a few client processes (this script in
``--client`` mode: plain asyncio sockets, one coroutine per stream, so the load is
cheap next to the server), spread evenly over the replicas. Then:

* **kills**: kills and unkills one after the other through the admin API of the
  first replica; per change, from the request's send to the *last* stream seeing
  it (p50/p99/max over the changes), and per stream (p50/p99 over every stream and
  change). ``time.monotonic()`` is one clock for every process on Linux;
* **server cost**: RSS of the server processes with the streams open, and per
  1,000 streams; CPU seconds per 1,000 streams while idle (heartbeats) and per
  change;
* **reconnect storm**: the last replica is stopped (SIGTERM), a change is made
  while it is down (through the other replica, or straight into the database when
  there is only one), the replica is started again; from its start until every
  stream is connected again and has seen that change (no change missed). Clients
  reconnect like the SDK: ``Last-Event-ID``, jittered backoff.

Targets (issue #20, one replica, 10,000 streams): kill p99 <= 250 ms to the last
stream, RSS <= 1 GB, every stream back and resynced within 10 s.

    .venv/bin/python benchmarks/fanout.py [--streams 1000,5000,10000] [--replicas 1,2]
        [--changes 20] [--clients 4] [--database postgres|sqlite] [--workers 1] [--signed] [--json]

``--workers N`` runs each replica as ``flagrail serve --workers N`` (RSS and CPU sum
every worker). ``--signed`` sets ``FLAGRAIL_SIGNING_KEY``: replicas and workers then apply
each other's changes from Redis as they are, instead of reading a snapshot per change.

File descriptors: every stream is a socket in the server and one in a client. The
harness raises its soft ``RLIMIT_NOFILE`` to the hard limit (children inherit it)
and refuses an N the limit cannot hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ENV = "production"
FLAG = "checkout"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
CONNECT_TIMEOUT = 30.0  # seconds for a client's connect plus the response's headers


# ================================================================== client mode
@dataclass
class Stream:
    """One SSE stream of a client process."""

    host: str
    port: int
    version: int = 0
    live: bool = False
    acked: int = 0  # the last expectation this stream met


@dataclass
class Expectation:
    """Record when each stream first sees a version >= ``version``."""

    version: int
    times: list[float] = field(default_factory=list)
    seen: int = 0


class StreamProtocol(asyncio.Protocol):
    """One stream's connection: sends the request, checks the status, decodes the
    chunked body and reports each event's id. A callback per read and no coroutine
    per line keeps the client's CPU per event small next to the server's (with
    asyncio streams the 10,000-stream clients spent more CPU per change than the
    server they measured)."""

    def __init__(
        self,
        client: ClientProcess,
        stream: Stream,
        request: bytes,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.client = client
        self.stream = stream
        self.request = request
        # Each resolves to None, or to the error that ended the stream (no future is
        # left holding an exception nobody retrieves).
        self.headers: asyncio.Future[BaseException | None] = loop.create_future()
        self.ended: asyncio.Future[BaseException | None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.body = b""
        self.need = -1  # bytes of the current chunk (with its CRLF) still to come; -1: head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            self._parse()
        except ValueError as exc:
            self._fail(exc)

    def _parse(self) -> None:
        if self.need == -1:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[end + 4 :]
            if b" 200 " not in status:
                raise ValueError(f"stream refused: {status!r}")
            self.need = 0
            self.stream.live = True
            if not self.headers.done():
                self.headers.set_result(None)
        while True:
            if self.need == 0:
                line = self.buffer.find(b"\r\n")
                if line < 0:
                    return
                size = int(self.buffer[:line], 16)
                if size == 0:
                    self._fail(EOFError("stream ended"))
                    return
                self.buffer = self.buffer[line + 2 :]
                self.need = size + 2
            if len(self.buffer) < self.need:
                return
            self.body += self.buffer[: self.need - 2]
            self.buffer = self.buffer[self.need :]
            self.need = 0
            while True:
                end = self.body.find(b"\n\n")
                if end < 0:
                    break
                frame, self.body = self.body[:end], self.body[end + 2 :]
                if frame.startswith(b"id: "):
                    self.client.saw(self.stream, int(frame[4 : frame.index(b"\n")]))

    def _fail(self, exc: BaseException) -> None:
        for future in (self.headers, self.ended):
            if not future.done():
                future.set_result(exc)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or EOFError("stream ended"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ClientProcess:
    """N/P streams in one asyncio loop; commands on stdin, reports on stdout (JSON lines).

    Commands: ``expect <v>`` (report once every stream has seen >= v), ``status``
    (live streams and the lowest version), ``quit``.
    """

    def __init__(self, targets: list[tuple[str, int]], token: str, count: int) -> None:
        self.token = token
        self.streams = [Stream(*targets[i % len(targets)]) for i in range(count)]
        self.expect: Expectation | None = None
        self.expect_id = 0
        self.ready_sent = False
        self.stopping = False
        self.connect_gate = asyncio.Semaphore(50)
        self.lock = threading.Lock()

    def emit(self, **data: Any) -> None:
        with self.lock:
            sys.stdout.write(json.dumps(data) + "\n")
            sys.stdout.flush()

    def saw(self, stream: Stream, version: int) -> None:
        if version <= stream.version:
            return
        stream.version = version
        expect = self.expect
        if expect is not None and version >= expect.version and stream.acked != self.expect_id:
            stream.acked = self.expect_id
            expect.times.append(time.monotonic())
            expect.seen += 1
            if expect.seen == len(self.streams):
                self.expect = None
                self.emit(expect=expect.version, times=expect.times, seen=self.min_max()[1])

    def min_max(self) -> tuple[int, int]:
        versions = [s.version for s in self.streams]
        return min(versions), max(versions)

    def command(self, line: str) -> None:
        parts = line.split()
        if not parts:
            return
        if parts[0] == "expect":
            self.expect_id += 1
            self.expect = Expectation(int(parts[1]))
            for stream in self.streams:  # already there (cannot happen before the send)
                if stream.version >= self.expect.version:
                    v, stream.version = stream.version, 0
                    self.saw(stream, v)
        elif parts[0] == "status":
            low, high = self.min_max()
            live = sum(1 for s in self.streams if s.live)
            self.emit(status=True, live=live, low=low, high=high)
        elif parts[0] == "quit":
            self.stopping = True

    async def run_stream(self, stream: Stream) -> None:
        failures = 0
        while not self.stopping:
            try:
                await self.connect_once(stream)
                failures = 0
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, EOFError):
                failures += 1
            stream.live = False
            if self.stopping:
                return
            # Like the SDK: jittered, growing backoff, so a restart is not a thundering herd.
            await asyncio.sleep(random.uniform(0, min(2.0, 0.25 * 2 ** min(failures, 3))))

    async def connect_once(self, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        resume = f"Last-Event-ID: {stream.version}\r\n" if stream.version else ""
        request = (
            f"GET /sdk/v1/stream?environment={ENV} HTTP/1.1\r\n"
            f"Host: {stream.host}:{stream.port}\r\n"
            f"Authorization: Bearer {self.token}\r\n"
            f"Accept: text/event-stream\r\n{resume}\r\n"
        ).encode()
        protocol = StreamProtocol(self, stream, request, loop)
        async with self.connect_gate:
            # Bounded: a SYN the kernel dropped (full backlog) is retried after 1 s, 3 s,
            # 7 s ... and must not hold the gate; headers come within the same bound.
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await loop.create_connection(lambda: protocol, stream.host, stream.port)
                    error = await asyncio.shield(protocol.headers)
            except BaseException:
                protocol.close()
                raise
            if error is not None:
                raise error
        try:
            error = await protocol.ended
        finally:
            protocol.close()
        if error is not None:
            raise error

    async def main(self) -> None:
        loop = asyncio.get_running_loop()

        def read_stdin() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: we are done
                for line in sys.stdin:
                    loop.call_soon_threadsafe(self.command, line)
                loop.call_soon_threadsafe(self.command, "quit")

        threading.Thread(target=read_stdin, daemon=True).start()
        tasks = [asyncio.create_task(self.run_stream(s)) for s in self.streams]
        last_progress = time.monotonic()
        while not self.stopping:
            if not self.ready_sent:
                if all(s.live and s.version for s in self.streams):
                    self.ready_sent = True
                    self.emit(ready=True, version=self.min_max()[0])
                elif time.monotonic() - last_progress >= 5:
                    last_progress = time.monotonic()
                    self.emit(progress=sum(1 for s in self.streams if s.live and s.version))
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def client_main(argv: list[str]) -> None:
    targets = [(h, int(p)) for h, p in (t.rsplit(":", 1) for t in argv[0].split(","))]
    token, count = argv[1], int(argv[2])
    run: Any = asyncio.run
    with contextlib.suppress(ImportError):  # the server's loop too (the `server` extra)
        import uvloop

        run = uvloop.run
    run(ClientProcess(targets, token, count).main())


# ================================================================== driver
def raise_fd_limit(streams: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return it. Raises SystemExit
    if a server holding ``streams`` sockets (plus headroom) would not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if streams + 512 > limit:
        raise SystemExit(f"{streams} streams need ~{streams + 512} file descriptors; limit {limit}")
    return limit


def tree_pids(root: int) -> list[int]:
    """``root`` and its descendants (by /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def usage(pids: list[int]) -> tuple[float, float]:
    """(RSS in MB, CPU seconds) summed over ``pids``."""
    rss = cpu = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{pid}/statm") as f:
                rss += int(f.read().split()[1]) * PAGE / 2**20
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return rss, cpu


class Server:
    """One ``flagrail serve`` subprocess on a fixed port (restartable)."""

    def __init__(self, db: str, port: int, env: dict[str, str], workers: int = 1) -> None:
        self.db = db
        self.port = port
        self.env = env
        self.workers = workers
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        flagrail = Path(sys.executable).with_name("flagrail")
        self.proc = subprocess.Popen(
            [str(flagrail), "serve", "--database-url", self.db, "--port", str(self.port),
             "--log-level", "warning", "--workers", str(self.workers)],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_up(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"server on {self.port} did not start")

    def pids(self) -> list[int]:
        return tree_pids(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Clients:
    """The client processes and their reports."""

    def __init__(self, procs: int, streams: int, targets: str, token: str) -> None:
        self.events: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        share = [streams // procs + (1 if i < streams % procs else 0) for i in range(procs)]
        for i, count in enumerate(share):
            proc = subprocess.Popen(
                [sys.executable, __file__, "--client", targets, token, str(count)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(i, proc), daemon=True).start()

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put((i, json.loads(line)))

    def send(self, line: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def wait(self, key: str, timeout: float) -> dict[int, dict[str, Any]]:
        """The next event carrying ``key`` from every process. ``progress`` reports
        (streams up so far) are printed to stderr on the way."""
        got: dict[int, dict[str, Any]] = {}
        progress: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self.procs):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{key}: only {len(got)}/{len(self.procs)} client processes "
                    f"(streams up: {sum(progress.values()):,})"
                )
            with contextlib.suppress(queue.Empty):
                i, event = self.events.get(timeout=remaining)
                if key in event and i not in got:
                    got[i] = event
                elif "progress" in event:
                    progress[i] = event["progress"]
                    if i == 0:
                        print(f"  streams up: {sum(progress.values()):,}", file=sys.stderr)
        return got

    def status(self) -> tuple[int, int]:
        """(live streams, lowest version) over every process."""
        self.send("status")
        got = self.wait("status", 10)
        return sum(e["live"] for e in got.values()), min(e["low"] for e in got.values())

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


class Database:
    """A database of the benchmark's own: a PostgreSQL database created (and dropped)
    on the machine's server, or a SQLite file."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.name = f"flagrail_fanout_{uuid.uuid4().hex[:10]}"
        if kind == "postgres":
            self.url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.name}"
            self._admin(f'CREATE DATABASE "{self.name}"')
        else:
            self.url = f"sqlite:///{tmp}/{self.name}.db"

    @staticmethod
    def _admin(sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", user="postgres", dbname="test", autocommit=True
        ) as conn:
            conn.execute(sql)

    def drop(self) -> None:
        if self.kind == "postgres":
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def seed(db: str) -> tuple[str, str]:
    """Schema, environment, flag; returns (admin token, client token)."""
    from flags.model import StateChange
    from flags.store.schema import upgrade
    from flags.store.sql import SqlFlagStore

    upgrade(db)
    store = SqlFlagStore(db)
    try:
        if ENV not in {e.name for e in store.list_environments()}:
            store.create_environment(ENV, actor="bench")
        store.create_flag(FLAG, actor="bench")
        store.update_state(FLAG, ENV, StateChange(enabled=True, rollout=100), actor="bench")
        _i, admin = store.create_token("bench-admin", "admin", None, actor="bench")
        _i, client = store.create_token("bench-sdk", "client", [ENV], actor="bench")
    finally:
        store.close()
    return admin, client


def write_directly(db: str, rollout: int) -> None:
    """A change straight into the database (what another replica or the CLI does)."""
    from flags.model import StateChange
    from flags.store.sql import SqlFlagStore

    store = SqlFlagStore(db)
    try:
        store.update_state(FLAG, ENV, StateChange(rollout=rollout), actor="bench")
    finally:
        store.close()


def p99(values: list[float]) -> float:
    """The 99th percentile (inclusive method); the value itself for a single sample."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def run(replicas: int, streams: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from flags.testing.redis_server import RedisServer, free_port

    database = Database(args.database, tmp)
    # Redis carries changes between replicas, and between the workers of one.
    redis = RedisServer().start() if replicas > 1 or args.workers > 1 else None
    servers: list[Server] = []
    clients: Clients | None = None
    http: httpx.Client | None = None
    try:
        admin, token = seed(database.url)
        per_replica = -(-streams // replicas)
        env = {
            "FLAGRAIL_MAX_STREAMS": str(max(10_000, per_replica)),
            "FLAGRAIL_MAX_STREAMS_PER_TOKEN": str(per_replica),
        }
        if redis is not None:
            env["FLAGRAIL_REDIS_URL"] = redis.url
        if args.signed:
            # Replicas and workers apply each other's verified changes from Redis (no
            # snapshot read per change on the ones that did not take the kill).
            env["FLAGRAIL_SIGNING_KEY"] = uuid.uuid4().hex
        servers = [Server(database.url, free_port(), env, args.workers) for _ in range(replicas)]
        for server in servers:
            server.start()
        for server in servers:
            server.wait_up()
        baseline = sum(usage(s.pids())[0] for s in servers)
        targets = ",".join(f"127.0.0.1:{s.port}" for s in servers)
        started = time.monotonic()
        clients = Clients(args.clients, streams, targets, token)
        ready = clients.wait("ready", 120 + streams / 20)
        connect_s = time.monotonic() - started
        version = min(e["version"] for e in ready.values())

        def server_usage() -> tuple[float, float]:
            totals = [usage(s.pids()) for s in servers]
            return sum(t[0] for t in totals), sum(t[1] for t in totals)

        rss, cpu0 = server_usage()
        idle_window = args.idle
        time.sleep(idle_window)  # measuring idle cost over a window, not waiting on a condition
        _rss, cpu1 = server_usage()
        idle_cpu_share = (cpu1 - cpu0) / idle_window

        http = httpx.Client(base_url=servers[0].url, headers={"Authorization": f"Bearer {admin}"})
        to_last: list[float] = []
        per_stream: list[float] = []
        _r, kill_cpu0 = server_usage()
        for n in range(args.changes):
            expect = version + 1
            clients.send(f"expect {expect}")
            sent = time.monotonic()
            response = http.post(
                f"/admin/flags/{FLAG}/{'kill' if n % 2 == 0 else 'unkill'}",
                json={"reason": "fanout bench", "environments": [ENV]},
                timeout=60,
            )
            response.raise_for_status()
            got = clients.wait("expect", 60)
            times = [t for e in got.values() for t in e["times"]]
            to_last.append((max(times) - sent) * 1000)
            per_stream.extend((t - sent) * 1000 for t in times)
            version = max(e["seen"] for e in got.values())
        _r, kill_cpu1 = server_usage()

        # Reconnect storm: the last replica goes away; a change is made meanwhile.
        victim = servers[-1]
        victim.stop()
        if replicas > 1:
            http.post(
                f"/admin/flags/{FLAG}/{'kill' if args.changes % 2 == 0 else 'unkill'}",
                json={"reason": "fanout bench: during the restart", "environments": [ENV]},
                timeout=60,
            ).raise_for_status()
        else:
            write_directly(database.url, 99)
        target = version + 1
        restart = time.monotonic()
        victim.start()
        answered: list[float] = []

        def note_up() -> None:
            with contextlib.suppress(RuntimeError):
                victim.wait_up()
                answered.append(time.monotonic() - restart)

        threading.Thread(target=note_up, daemon=True).start()
        back_s: float | None = None
        live = low = 0
        while time.monotonic() - restart < args.storm_timeout:
            live, low = clients.status()
            if live == streams and low >= target:
                back_s = time.monotonic() - restart
                break
            time.sleep(0.1)
        thousands = streams / 1000
        return {
            "replicas": replicas,
            "workers": args.workers,
            "signed": args.signed,
            "streams": streams,
            "database": args.database,
            "changes": args.changes,
            "connect_s": connect_s,
            "rss_mb": rss,
            "rss_per_1000_mb": (rss - baseline) / thousands,
            "idle_cpu_per_1000": idle_cpu_share / thousands,
            "kill_cpu_ms_per_change_per_1000": (kill_cpu1 - kill_cpu0)
            * 1000
            / args.changes
            / thousands,
            "last_p50": statistics.median(to_last),
            "last_p99": p99(to_last),
            "last_max": max(to_last),
            "stream_p50": statistics.median(per_stream),
            "stream_p99": p99(per_stream),
            "storm_back_s": back_s,
            "storm_up_s": answered[0] if answered else None,
            "storm_live": live,
            "storm_low_version": low,
            "storm_target_version": target,
            "load_average": os.getloadavg()[0],
        }
    finally:
        if http is not None:
            http.close()
        if clients is not None:
            clients.stop()
        for server in servers:
            server.stop()
        if redis is not None:
            redis.close()
        database.drop()


def report(results: list[dict[str, Any]]) -> None:
    """A Markdown table, one row per topology and stream count."""
    print(
        "\nSSE fan-out. Kill to the last stream: per change, from the kill request's send "
        "to the last stream seeing it (p50 / p99 / max over the changes); per stream: over "
        "every stream and change. RSS: all server processes with the streams open. CPU: "
        "server CPU seconds per second while idle (heartbeats), and server CPU ms per change, "
        "each per 1,000 streams. Storm: the last replica restarted with a change made while "
        "it was down; seconds from its start until every stream is back and has that change "
        "(in brackets: until the restarted replica answered its health check). Load avg: the "
        "machine's 1-minute load average at the end of the run (other work skews every figure)."
    )
    header = [
        "replicas",
        "workers",
        "streams",
        "db",
        "kill to last p50 / p99 / max",
        "per stream p50 / p99",
        "RSS MB (per 1,000)",
        "idle CPU per 1,000",
        "CPU ms per change per 1,000",
        "connect s",
        "storm: back in s",
        "load avg",
        "targets",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    for r in results:
        verdict = "-"
        if r["replicas"] == 1 and r["streams"] >= 10_000:
            met = (
                r["last_p99"] <= 250
                and r["rss_mb"] <= 1024
                and r["storm_back_s"] is not None
                and r["storm_back_s"] <= 10
            )
            verdict = "met" if met else "MISSED"
        up = f" (up at {r['storm_up_s']:.1f})" if r["storm_up_s"] is not None else ""
        storm = (
            f"{r['storm_back_s']:.1f}{up}"
            if r["storm_back_s"] is not None
            else f"NOT BACK ({r['storm_live']:,} live, v{r['storm_low_version']}"
            f" < v{r['storm_target_version']})"
        )
        cells = [
            str(r["replicas"]),
            str(r.get("workers", 1)),
            f"{r['streams']:,}",
            r["database"],
            f"{r['last_p50']:,.0f} / {r['last_p99']:,.0f} / {r['last_max']:,.0f}",
            f"{r['stream_p50']:,.0f} / {r['stream_p99']:,.0f}",
            f"{r['rss_mb']:,.0f} ({r['rss_per_1000_mb']:,.1f})",
            f"{r['idle_cpu_per_1000']:.1%}",
            f"{r['kill_cpu_ms_per_change_per_1000']:,.1f}",
            f"{r['connect_s']:,.1f}",
            storm,
            f"{r['load_average']:.1f}",
            verdict,
        ]
        print("| " + " | ".join(cells) + " |")
    print("(Targets, one replica at 10,000 streams: p99 <= 250 ms, RSS <= 1 GB, storm <= 10 s.)")


def postgres_available() -> bool:
    try:
        Database._admin("SELECT 1")
    except Exception:  # any failure means: not usable here
        return False
    return True


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1000,5000,10000")
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--changes", type=int, default=20, help="kills+unkills per run")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default=None)
    parser.add_argument("--idle", type=float, default=5.0, help="idle CPU window, s")
    parser.add_argument("--storm-timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--workers", type=int, default=1, help="flagrail serve --workers per replica"
    )
    parser.add_argument(
        "--signed",
        action="store_true",
        help="set FLAGRAIL_SIGNING_KEY: changes cross Redis signed, not as hints",
    )
    args = parser.parse_args()
    if args.database is None:
        args.database = "postgres" if postgres_available() else "sqlite"
    counts = [int(n) for n in args.streams.split(",")]
    raise_fd_limit(max(counts))
    tmp = Path(tempfile.mkdtemp(prefix="flagrail-fanout-"))
    results = []
    for replicas in (int(r) for r in args.replicas.split(",")):
        for streams in counts:
            print(f"running {replicas} replica(s), {streams:,} streams ...", file=sys.stderr)
            results.append(run(replicas, streams, args, tmp))
            if not args.json:
                report(results[-1:])
    if args.json:
        print(json.dumps({"results": results}, indent=2))
    else:
        report(results)


if __name__ == "__main__":
    main()
