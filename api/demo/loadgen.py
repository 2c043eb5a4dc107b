"""The load generator: tenants calling the exam platform with their API keys, open loop.

Requests are sent on a fixed schedule (``rps`` per second, spread over the
service processes like a load balancer would), whether or not earlier ones
have been answered, so a stalled service shows up as latency rather than as a
quietly lower rate. Every answer is kept as a ``Sample``; whether it was right
is decided afterwards by ``judge``, once every revocation time is known.

A share of requests (``invalid_share``) uses keys that were never issued; keys
revoked during the run keep being used by their tenant, so a revoked key that
still gets in is caught.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

__all__ = [
    "DemoKey",
    "HttpPool",
    "LoadGenerator",
    "Sample",
    "Verdict",
    "judge",
    "percentile",
]

ENDPOINTS = (
    ("GET", "/t/{tenant}/exams", 6),
    ("POST", "/t/{tenant}/exams", 2),
    ("GET", "/t/{tenant}/dashboard", 2),
)
REVOCATION_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class DemoKey:
    """A key the load generator uses. ``key_id`` is None for a key that was never issued."""

    index: int
    tenant: str
    secret: str
    key_id: str | None


@dataclass(slots=True)
class Sample:
    """One answered (or failed) request. ``status`` 0: no HTTP answer (refused, timeout)."""

    sent: float  # unix time the request left
    latency: float  # seconds until the answer (or the failure)
    status: int
    key: int  # DemoKey.index
    target: int  # index of the service process
    source: str  # X-Auth-Source of the answer: l1, l2, loader, ... ("" if none)

    @property
    def answered(self) -> float:
        return self.sent + self.latency


class Verdict(StrEnum):
    RIGHT = "right"
    FALSE_REJECTION = "false_rejection"  # a valid key answered 401/403
    FALSE_ACCEPTANCE = "false_acceptance"  # an invalid key let in, or a revoked key >1 s late
    ERROR = "error"  # no answer or a 5xx: neither right nor a wrong auth decision


def judge(
    sample: Sample,
    key: DemoKey,
    revoked_at: Mapping[int, float],
    grace: float = REVOCATION_GRACE,
) -> Verdict:
    """Was ``sample`` the right answer for ``key``, given when keys were revoked?

    A valid key must get 200; rejected before its revocation committed, it is
    a false rejection. A never-issued key must never get in; a revoked key
    must not get in when the request was sent more than ``grace`` seconds
    after the revocation committed (a request in flight may go either way).
    """
    status = sample.status
    if status == 0 or status >= 500:
        return Verdict.ERROR
    rejected = status in (401, 403)
    accepted = 200 <= status < 300
    if key.key_id is None:
        return Verdict.FALSE_ACCEPTANCE if accepted else Verdict.RIGHT
    revoked = revoked_at.get(key.index)
    if revoked is None:
        return Verdict.FALSE_REJECTION if rejected else Verdict.RIGHT
    if accepted and sample.sent >= revoked + grace:
        return Verdict.FALSE_ACCEPTANCE
    if rejected and sample.answered < revoked:
        return Verdict.FALSE_REJECTION
    return Verdict.RIGHT


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


class LoadGenerator:
    """Send ``rps`` requests per second to ``targets`` (base URLs), on a thread of its own.

    ``start()`` returns at once; ``stop()`` stops sending, waits up to
    ``timeout`` for answers in flight and joins the thread. ``samples`` grows
    while it runs (appended on the generator's thread; read it after ``stop``
    or take a ``len`` snapshot).
    """

    def __init__(
        self,
        targets: Sequence[str],
        keys: Sequence[DemoKey],
        *,
        rps: float,
        seed: int = 7,
        timeout: float = 2.0,
        max_in_flight: int = 400,
        connections: int = 16,
    ) -> None:
        if rps <= 0:
            raise ValueError("rps must be positive")
        self.targets = list(targets)
        self.keys = list(keys)
        self.rps = rps
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.connections = connections * len(targets)
        self.samples: list[Sample] = []
        self.shed = 0  # requests not sent because max_in_flight were outstanding
        self._random = random.Random(seed)
        self._valid = {}
        for key in self.keys:
            if key.key_id is not None:
                self._valid.setdefault(key.tenant, []).append(key)
        self._tenants = sorted(self._valid)
        self._invalid = [k for k in self.keys if k.key_id is None]
        self._weights = [w for _m, _p, w in ENDPOINTS]
        self.invalid_share = 0.05
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = threading.Event()
        self.started_at: float | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="loadgen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 10)
            self._thread = None

    def _pick(self) -> tuple[str, str, DemoKey]:
        rnd = self._random
        if self._invalid and rnd.random() < self.invalid_share:
            key = rnd.choice(self._invalid)
            tenant = key.tenant
        else:
            tenant = rnd.choice(self._tenants)
            key = rnd.choice(self._valid[tenant])
        method, path, _w = rnd.choices(ENDPOINTS, weights=self._weights)[0]
        return method, path.format(tenant=tenant), key

    def measure_revocation(
        self, key: DemoKey, revoke: Callable[[], float], *, deadline: float = 3.0
    ) -> tuple[float, list[float | None], int]:
        """Revoke ``key`` with ``revoke()`` (called on this thread; it returns the unix
        time the revocation committed), then have the generator's event loop ask every
        process with the key, concurrently and every 2 ms, until each answers 401.

        Returns ``(committed_at, latencies, late)``: per process the milliseconds from
        the commit to its first 401 decision (the answer's ``X-Decided-At``, the
        process's own clock on this machine; the answer's arrival if the header is
        missing), None if none came within ``deadline`` seconds of the commit; and
        how many probes were let in more than 1 s after the commit. The probes run
        on the generator's loop with connections of their own, so they neither
        queue behind the load nor wait for another thread's turn; the time
        ``revoke()`` takes to return after the commit is counted (probing starts
        then). Must be called while the generator runs; raises what ``revoke`` raises.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("the load generator is not running")
        committed_at = revoke()
        first_401: list[float | None] = [None] * len(self.targets)
        accepted_sent: list[float] = []
        give_up = committed_at + deadline

        async def probe(i: int) -> None:
            pool = HttpPool(self.targets[i], 1)
            headers = {"Authorization": f"Bearer {key.secret}"}
            path = f"/t/{key.tenant}/exams"
            try:
                while time.time() < give_up:
                    sent = time.time()
                    try:
                        async with asyncio.timeout(1.0):
                            status, answer = await pool.request("GET", path, headers)
                    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
                        await asyncio.sleep(0.002)
                        continue
                    if status == 401:
                        try:
                            first_401[i] = float(answer["x-decided-at"])
                        except (KeyError, ValueError):
                            first_401[i] = time.time()
                        return
                    if 200 <= status < 300:
                        accepted_sent.append(sent)
                    await asyncio.sleep(0.002)
            finally:
                pool.close()

        async def probe_all() -> None:
            await asyncio.gather(*(probe(i) for i in range(len(self.targets))))

        asyncio.run_coroutine_threadsafe(probe_all(), loop).result(timeout=deadline + 2)
        # The first 401 decision bounds from above when a process started rejecting.
        latencies = [
            None if at is None else max(0.0, (at - committed_at) * 1000.0) for at in first_401
        ]
        late = sum(1 for sent in accepted_sent if sent >= committed_at + REVOCATION_GRACE)
        return committed_at, latencies, late

    def _run(self) -> None:
        asyncio.run(self._main())

    def wait_running(self, timeout: float = 5.0) -> bool:
        """Block until the generator's event loop runs (``measure_revocation`` needs it)."""
        return self._running.wait(timeout)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running.set()
        pools = [HttpPool(url, self.connections // len(self.targets)) for url in self.targets]
        in_flight: set[asyncio.Task[None]] = set()
        interval = 1.0 / self.rps
        start = time.perf_counter()
        self.started_at = time.time()
        n = 0
        try:
            while not self._stop.is_set():
                due = start + n * interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                target = n % len(self.targets)
                n += 1
                if len(in_flight) >= self.max_in_flight:
                    self.shed += 1
                    continue
                method, path, key = self._pick()
                task = asyncio.create_task(self._one(pools[target], target, method, path, key))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight, timeout=self.timeout + 1)
        finally:
            self._running.clear()
            self._loop = None
            for pool in pools:
                pool.close()

    async def _one(self, pool: HttpPool, target: int, method: str, path: str, key: DemoKey) -> None:
        headers = {"Authorization": f"Bearer {key.secret}"}
        body = b'{"title":"Exam"}' if method == "POST" else None
        sent = time.time()
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                status, answer = await pool.request(method, path, headers, body)
            source = answer.get("x-auth-source", "")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            status, source = 0, ""
        self.samples.append(
            Sample(sent, time.perf_counter() - t0, status, key.index, target, source)
        )


class HttpPool:
    """A minimal HTTP/1.1 keep-alive client for one origin, on asyncio streams.

    The load generator's own cost must stay far below the service's on a small
    machine; a general-purpose client spends milliseconds of CPU per request,
    this one tens of microseconds. It speaks just what the demo service
    answers: ``Content-Length`` or chunked bodies. At most ``size`` requests
    are in flight; the rest wait (their wait counts as latency). Not thread-safe:
    one event loop.
    """

    def __init__(self, base_url: str, size: int) -> None:
        parsed = urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self._host_header = f"{self.host}:{self.port}"
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max(1, size))

    async def request(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, str]]:
        """Send one request; returns the status and the lower-cased response headers.
        Raises ``OSError``, ``asyncio.IncompleteReadError`` or ``ValueError`` (a
        malformed answer); the connection is then dropped."""
        async with self._slots:
            if self._idle:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                status, answer, keep = await self._exchange(
                    reader, writer, method, path, headers, body
                )
            except BaseException:
                writer.close()
                raise
            if keep:
                self._idle.append((reader, writer))
            else:
                writer.close()
            return status, answer

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes | None,
    ) -> tuple[int, dict[str, str], bool]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.1 answer: {status_line!r:.80}")
        status = int(parts[1])
        answer: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                answer[name.strip().lower()] = value.strip()
        if "chunked" in answer.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.readexactly(int(answer.get("content-length", "0")))
        keep = answer.get("connection", "").lower() != "close"
        return status, answer, keep

    def close(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()
