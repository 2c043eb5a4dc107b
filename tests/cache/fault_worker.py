"""A worker process of the cache fault matrix (``test_fault_matrix.py``).

Run as ``python tests/cache/fault_worker.py``; it serves cells one after another,
speaking line-delimited JSON (stdin: commands, stdout: events; logs go to stderr)::

    parent -> {"cmd": "cell", ...Cell fields...}
    worker -> {"event": "ready"}                      cache built, clients connected
    parent -> {"cmd": "go", "start_at": t, "change_at": t|null, "fault_at": t, "end_at": t}
    worker -> {"event": "result", ...}                or {"event": "error", "detail": ...}
    parent -> {"cmd": "exit"} (or end of input)

Two roles. A **cache** worker builds ``auth.cache``-style layers (memory, flag off;
Redis, live or shadow, verified) with the cell's fault where production would have
it (a faulty ``serializer=``, a faulty codec, a layer whose ``set`` writes wrong
records, a loader wrapper) and runs ``rate`` checks/s through ``get`` or ``aget``,
comparing every answer with the truth it holds itself (``truth``), never through
the cache's code. A **foreign** worker is another process with the right secret:
it writes wrong records through its own ``RedisLayer``, copies entries to other
keys, or replays entries it saved before the truth changed.

Times are unix seconds (``time.time()``) so that processes agree on them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from flags.cache import Codec, Guard, JsonSerializer, LayeredCache, MemoryLayer, RedisLayer
from flags.cache.codec import Entry
from flags.cache.guard import Breach, LayerWatch
from flags.testing.client import TestFlagClient

HOT_KEYS = 40  # keys every process reads over and over (cached before the fault)
FRESH_USES = 3  # uses of each fresh key: one fill, then hits
SCOPES = {1: ["exams:read", "exams:write"], 2: ["exams:read"]}  # truth before/after a change

SERIALIZER_DUMPS = "serializer-dumps"
SERIALIZER_LOADS = "serializer-loads"
CODEC = "codec"
LAYER_SET = "layer-set"
LOADER_WRAPPER = "loader-wrapper"
FOREIGN_WRONG = "foreign-wrong"
FOREIGN_COPY = "foreign-copy"
FOREIGN_REPLAY = "foreign-replay"
INJECTIONS = (
    SERIALIZER_DUMPS,
    SERIALIZER_LOADS,
    CODEC,
    LAYER_SET,
    LOADER_WRAPPER,
    FOREIGN_WRONG,
    FOREIGN_COPY,
    FOREIGN_REPLAY,
)
FOREIGN = frozenset({FOREIGN_WRONG, FOREIGN_COPY, FOREIGN_REPLAY})


@dataclass(frozen=True)
class Cell:
    """What one process does in one cell of the matrix."""

    role: str  # "cache" or "foreign"
    injection: str
    mode: str  # "live" (verified) or "shadow"
    driver: str  # "get" or "aget"
    name: str  # the cache's name: flags <name>.l1, <name>.l2, <name>.l2.shadow
    redis_url: str
    prefix: str
    secret: str  # hex
    admin_url: str
    token: str
    environment: str
    index: int = 0  # this process's number in the cell
    rate: float = 800.0
    l2_ttl: float = 3.0
    verify_share: float = 1.0
    guard_window: float = 1.0
    guard_min_samples: int = 5
    guard_max_mismatch_rate: float = 0.002
    guard_max_corrupt_rate: float = 0.01


# ----------------------------------------------------------------------------- the truth
def truth(key: str, version: int) -> dict[str, Any]:
    """The record of ``key`` as the test knows it: JSON-shaped (lists, str keys).
    ``version`` 2 is the hot keys' records after the change of the truth (``foreign-replay``
    cells: a scope taken away); fresh keys never change."""
    tenant = f"tenant-{zlib.crc32(key.encode()) % 7}"
    scopes = SCOPES[version if key.startswith("hot-") else 1]
    return {"key": key, "tenant": tenant, "scopes": list(scopes), "active": True}


def plain(value: Any) -> Any:
    """``value`` as plain JSON shapes, read the way the application reads it (a record's
    own items, tuples as lists): how an answer is compared with ``truth``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in dict.items(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def wrong(value: Any) -> Any:
    """The seed incident's wrong record: well formed, ``scopes`` emptied."""
    if isinstance(value, dict) and "scopes" in value:
        return {**value, "scopes": []}
    return value


def key_of(i: int) -> str:
    """The key of check ``i``: every other check a hot key, the rest fresh keys used
    ``FRESH_USES`` times each (so the layer keeps being written during a fault)."""
    if i % 2 == 0:
        return f"hot-{(i // 2) % HOT_KEYS}"
    return f"new-{(i // 2) // FRESH_USES}"


def hot_keys() -> list[str]:
    return [f"hot-{n}" for n in range(HOT_KEYS)]


class Clock:
    """When the fault is on, and which version of the truth holds; shared by the faults."""

    def __init__(self) -> None:
        self.fault_at = float("inf")
        self.change_at = float("inf")
        self.hits = 0  # faulty operations done

    @property
    def faulty(self) -> bool:
        return time.time() >= self.fault_at

    def version(self, at: float | None = None) -> int:
        return 2 if (time.time() if at is None else at) >= self.change_at else 1

    def hit(self) -> None:
        self.hits += 1


# ----------------------------------------------------------------------------- the faults
class DumpsFault:
    """A serializer whose ``dumps`` writes each record with its scopes emptied while the
    fault is on (well formed, so the envelope checksum holds): the seed incident."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.inner = JsonSerializer()

    def dumps(self, value: Any) -> bytes:
        if self.clock.faulty and isinstance(value, dict):
            self.clock.hit()
            value = wrong(value)
        return self.inner.dumps(value)

    def loads(self, data: bytes) -> Any:
        return self.inner.loads(data)


class LoadsFault:
    """A serializer whose ``loads`` drops the scopes of what it reads while the fault is on."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.inner = JsonSerializer()

    def dumps(self, value: Any) -> bytes:
        return self.inner.dumps(value)

    def loads(self, data: bytes) -> Any:
        value = self.inner.loads(data)
        if self.clock.faulty and isinstance(value, dict):
            self.clock.hit()
            value = wrong(value)
        return value


class CodecFault(Codec):
    """A codec whose ``encode`` envelopes a wrong record (checksummed as usual)."""

    def __init__(self, secret: bytes, clock: Clock) -> None:
        super().__init__(secret)
        self.clock = clock

    def encode(self, key: bytes, value: Any, **kwargs: Any) -> bytes:
        if self.clock.faulty and isinstance(value, dict):
            self.clock.hit()
            value = wrong(value)
        return super().encode(key, value, **kwargs)


class SetFaultLayer(RedisLayer):
    """A Redis layer whose ``set``/``aset`` store a wrong record while the fault is on."""

    def __init__(self, url: str, *, clock: Clock, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.clock = clock

    def _wrong(self, entry: Entry) -> Entry:
        if not self.clock.faulty or not isinstance(entry.value, dict):
            return entry
        self.clock.hit()
        return Entry(wrong(entry.value), entry.written_at, entry.negative, entry.source)

    def set(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        return super().set(key, self._wrong(entry), ttl)

    async def aset(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        return await super().aset(key, self._wrong(entry), ttl)


class ColdLoadFault:
    """A wrapper around the loader that the request path's lookups go through (an
    application's request-scoped memo, or a lagging replica it reads from while a
    request is being served): while the fault is on, it answers a key's first lookup
    on the request path, the one whose answer fills the cache, with the scopes
    emptied. Lookups off the request path (the cache's verifications, on its worker
    thread or in tasks of their own) and later lookups reach the truth.

    The caller of that first lookup gets the wrong record from the loader itself, not
    from the cache: ``said_wrong`` keeps when each such answer was given, so that the
    judge does not blame the cache for it.
    """

    def __init__(self, load: Callable[[str], Any], clock: Clock) -> None:
        self.load = load
        self.clock = clock
        self.seen: set[str] = set()
        self.said_wrong: dict[str, float] = {}
        self.request_thread: int | None = None  # the thread serving requests
        self.request_task: asyncio.Task[Any] | None = None  # ... and its task, under aget

    def on_request_path(self) -> bool:
        if threading.get_ident() != self.request_thread:
            return False
        if self.request_task is None:
            return True
        try:
            return asyncio.current_task() is self.request_task
        except RuntimeError:  # no event loop running here
            return False

    def __call__(self, key: str) -> Any:
        record = self.load(key)
        if not self.clock.faulty or not self.on_request_path() or key in self.seen:
            return record
        self.seen.add(key)
        self.clock.hit()
        self.said_wrong[key] = time.time()
        return wrong(record)


def loader_for(clock: Clock, injection: str) -> Callable[[str], Any]:
    """The loader: the truth of the current version, scopes as a tuple (a shape a JSON
    serializer legitimately changes). With ``loader-wrapper``, wrapped in a
    ``ColdLoadFault``."""

    def load(key: str) -> Any:
        record = truth(key, clock.version())
        record["scopes"] = tuple(record["scopes"])
        return record

    return ColdLoadFault(load, clock) if injection == LOADER_WRAPPER else load


# ----------------------------------------------------------------------------- a cache worker
class TimedGuard(Guard):
    """``Guard`` that notes when it first breached (the local bypass), for the report."""

    breached_at: float | None = None

    def breached(self, watch: LayerWatch, breach: Breach) -> None:
        if self.breached_at is None:
            self.breached_at = time.time()
        super().breached(watch, breach)


@dataclass
class Tally:
    """Checks and wrong answers, judged against ``truth`` by the worker itself."""

    checks: int = 0
    checks_fault: int = 0
    wrong_fault: int = 0
    wrong_before: int = 0
    loader_wrong: int = 0  # wrong answers the (faulty) loader gave itself
    first_wrong_at: float | None = None
    wrong_samples: list[str] = field(default_factory=list)
    stats_at_fault: dict[str, Any] | None = None

    def judge(
        self,
        key: str,
        answer: Any,
        started: float,
        clock: Clock,
        said_wrong: dict[str, float] | None = None,
    ) -> None:
        """Judge one answer. The truth is the version current when the check started; a
        check belongs to the fault when it ended after the fault began. A wrong answer
        the loader itself gave during the check (``said_wrong``) is the loader's, not the
        cache's: counted apart."""
        ended = time.time()
        self.checks += 1
        right = plain(answer) == truth(key, clock.version(started))
        if ended >= clock.fault_at:
            self.checks_fault += 1
        if not right and said_wrong and started <= said_wrong.get(key, -1.0) <= ended:
            self.loader_wrong += 1
            return
        if right:
            return
        if ended >= clock.fault_at:
            self.wrong_fault += 1
            if self.first_wrong_at is None:
                self.first_wrong_at = ended
        else:
            self.wrong_before += 1
        if len(self.wrong_samples) < 5:
            self.wrong_samples.append(f"{key}: {plain(answer)!r}")


class CacheWorker:
    """One cache process of a cell: the layers with the cell's fault, a guard that kills
    through the real admin API, and the checks, judged as they are answered."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.clock = Clock()
        secret = bytes.fromhex(cell.secret)
        layer_kwargs: dict[str, Any] = {
            "secret": secret,
            "ttl": cell.l2_ttl,
            "prefix": cell.prefix,
            "socket_timeout": 0.25,
            "connect_timeout": 0.25,
        }
        if cell.injection == SERIALIZER_DUMPS:
            layer_kwargs["serializer"] = DumpsFault(self.clock)
        elif cell.injection == SERIALIZER_LOADS:
            layer_kwargs["serializer"] = LoadsFault(self.clock)
        l2: RedisLayer
        if cell.injection == LAYER_SET:
            l2 = SetFaultLayer(cell.redis_url, clock=self.clock, **layer_kwargs)
        else:
            l2 = RedisLayer(cell.redis_url, **layer_kwargs)
        if cell.injection == CODEC:
            l2.codec = CodecFault(secret, self.clock)  # the layer's codec, swapped for a bad one
        self.flags = TestFlagClient(
            {
                f"{cell.name}.l1": False,
                f"{cell.name}.l2": True,
                f"{cell.name}.l2.shadow": cell.mode == "shadow",
            },
            environment=cell.environment,
        )
        self.guard = TimedGuard(
            cell.admin_url,
            cell.token,
            environment=cell.environment,
            window=cell.guard_window,
            min_samples=cell.guard_min_samples,
            max_mismatch_rate=cell.guard_max_mismatch_rate,
            max_corrupt_rate=cell.guard_max_corrupt_rate,
        )
        load = loader_for(self.clock, cell.injection)
        self.wrapper = load if isinstance(load, ColdLoadFault) else None
        self.said_wrong = self.wrapper.said_wrong if self.wrapper is not None else None
        loader: Any = load
        if cell.driver == "aget":

            async def aload(key: str) -> Any:
                return load(key)

            loader = aload
        self.cache = LayeredCache(
            cell.name,
            [MemoryLayer(ttl=2.0), l2],
            loader,
            self.flags,
            guard=self.guard,
            verify_share=cell.verify_share,
            invalidation_hold=0.15,
        )
        self.l2 = l2
        self.tally = Tally()

    def start(self) -> None:
        self.cache.start(wait=5.0)
        self.cache.get("warm-up")  # connects and learns the epoch before the clock starts

    def _due(self, i: int, start_at: float) -> float:
        return start_at + i / self.cell.rate

    def _snapshot(self) -> None:
        """Keep the layer's counters as they are just before the fault: the last look
        taken before it (the fault cannot act before ``fault_at``; a look taken after it,
        by a process the machine did not run for a while, would count its effects)."""
        now = time.time()
        if self.clock.fault_at - 0.5 <= now < self.clock.fault_at:
            self.tally.stats_at_fault = self.cache.stats()["l2"]

    def _change_due(self, changed: bool) -> bool:
        """Is the change of the truth 50 ms away (and not applied yet)?"""
        return not changed and time.time() >= self.clock.change_at - 0.05

    def _change(self) -> None:
        """The application changes the hot keys' records (at ``change_at``: the loader
        answers the new version from then on) and invalidates them. Its traffic waits
        meanwhile, with no verification in flight, so no check or verification
        straddles the change: a check after it must get the new record."""
        _sleep_until(self.clock.change_at)
        for key in hot_keys():
            self.cache.invalidate(key)

    def run_sync(self, start_at: float, end_at: float) -> None:
        get, judge, clock, said_wrong = (
            self.cache.get,
            self.tally.judge,
            self.clock,
            self.said_wrong,
        )
        if self.wrapper is not None:
            self.wrapper.request_thread = threading.get_ident()
        i, changed = 0, False
        while True:
            due = self._due(i, start_at)
            if due >= end_at:
                break
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            self._snapshot()
            if self._change_due(changed):
                self.cache.wait_idle(2.0)
                self._change()
                changed = True
            key = key_of(i)
            at = time.time()
            judge(key, get(key, truth(key, 1)["tenant"]), at, clock, said_wrong)
            i += 1

    async def run_async(self, start_at: float, end_at: float) -> None:
        aget, judge, clock, said_wrong = (
            self.cache.aget,
            self.tally.judge,
            self.clock,
            self.said_wrong,
        )
        if self.wrapper is not None:
            self.wrapper.request_thread = threading.get_ident()
            self.wrapper.request_task = asyncio.current_task()
        i, changed = 0, False
        while True:
            due = self._due(i, start_at)
            if due >= end_at:
                break
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._snapshot()
            if self._change_due(changed):
                # Verification tasks of the last hits finish while the loop waits.
                await asyncio.sleep(max(0.0, self.clock.change_at - time.time()))
                self._change()
                changed = True
            key = key_of(i)
            at = time.time()
            judge(key, await aget(key, truth(key, 1)["tenant"]), at, clock, said_wrong)
            i += 1
        await asyncio.sleep(0.05)  # verification tasks of the last hits
        aclose = getattr(self.l2, "aclose", None)
        if aclose is not None:
            await aclose()

    def run(self, go: dict[str, Any]) -> dict[str, Any]:
        self.clock.fault_at = go["fault_at"]
        if go.get("change_at") is not None:
            self.clock.change_at = go["change_at"]
        if self.cell.driver == "aget":
            asyncio.run(self.run_async(go["start_at"], go["end_at"]))
        else:
            self.run_sync(go["start_at"], go["end_at"])
        finished_at = time.time()
        self.cache.wait_idle(5.0)
        self.guard.wait_idle(10.0)
        stats = self.cache.stats()
        return {
            **asdict(self.tally),
            "finished_at": finished_at,
            "fault_hits": self.clock.hits,
            "l2": stats["l2"],
            "background_dropped": stats["cache"]["background_dropped"],
            "l2_mode_end": int(self.cache.modes()["l2"]),
            "guard_results": [r.outcome for r in self.guard.results],
            "breached_at": self.guard.breached_at,
            "guard_breaches": dict(self.guard.stats.breaches),
        }

    def close(self) -> None:
        self.cache.close()
        self.guard.close(2.0)


# ----------------------------------------------------------------------------- a foreign writer
class ForeignWorker:
    """Another process with the right secret, sharing the layer's Redis."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.layer = RedisLayer(
            cell.redis_url,
            secret=bytes.fromhex(cell.secret),
            ttl=cell.l2_ttl,
            prefix=cell.prefix,
            socket_timeout=0.5,
            connect_timeout=0.5,
        )
        self.layer.bind(cell.name)
        self.raw = redis.Redis.from_url(cell.redis_url, socket_timeout=2)
        self.saved: dict[bytes, bytes] = {}
        self.writes = 0

    def start(self) -> None:
        self.raw.ping()

    def _round(self) -> None:
        keys = hot_keys()
        px = int(self.cell.l2_ttl * 1000)
        if self.cell.injection == FOREIGN_WRONG:
            for key in keys:  # the current epoch and envelope, the wrong record
                record = wrong(truth(key, 1))
                if self.layer.set(key, Entry(record, time.time()), self.cell.l2_ttl):
                    self.writes += 1
        elif self.cell.injection == FOREIGN_COPY:
            pipe = self.raw.pipeline(transaction=False)
            for key in keys:
                pipe.get(self.layer.storage_key(key))
            found = pipe.execute()
            pipe = self.raw.pipeline(transaction=False)
            for n, key in enumerate(keys):
                data = found[(n + 1) % len(keys)]  # the neighbour's entry, under this key
                if data is not None:
                    pipe.set(self.layer.storage_key(key), data, px=px)
                    self.writes += 1
            pipe.execute()
        elif self.saved:  # FOREIGN_REPLAY: entries saved before the truth changed
            pipe = self.raw.pipeline(transaction=False)
            for rkey, data in self.saved.items():
                pipe.set(rkey, data, px=px)
                self.writes += 1
            pipe.execute()

    def run(self, go: dict[str, Any]) -> dict[str, Any]:
        change_at = go.get("change_at")
        if change_at is not None:  # save what is stored before the change
            # Every 50 ms until 0.1 s before it, keeping the newest entry seen per key: on
            # a loaded machine the cache may write a hot key early and let it expire, or
            # write it late; one look at the last moment found nothing to replay.
            while True:
                for key in hot_keys():
                    data = self.raw.get(self.layer.storage_key(key))
                    if data is not None:
                        self.saved[self.layer.storage_key(key)] = data
                if time.time() >= change_at - 0.15:
                    break
                _sleep_until(min(time.time() + 0.05, change_at - 0.1))
        _sleep_until(go["fault_at"])
        while time.time() < go["end_at"]:
            self._round()
            time.sleep(0.05)
        return {"writes": self.writes, "saved": len(self.saved)}

    def close(self) -> None:
        self.layer.close()
        self.raw.close()


def _sleep_until(at: float) -> None:
    wait = at - time.time()
    if wait > 0:
        time.sleep(wait)


# ----------------------------------------------------------------------------- the protocol
def _send(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _serve_cell(cell: Cell, commands: Any) -> None:
    worker: CacheWorker | ForeignWorker = (
        ForeignWorker(cell) if cell.role == "foreign" else CacheWorker(cell)
    )
    try:
        worker.start()
        _send({"event": "ready"})
        go = json.loads(next(commands))
        result = worker.run(go)
        _send({"event": "result", "role": cell.role, "index": cell.index, **result})
    finally:
        worker.close()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    commands = iter(sys.stdin.readline, "")
    for line in commands:
        message = json.loads(line)
        if message.get("cmd") == "exit":
            return
        message.pop("cmd", None)
        try:
            _serve_cell(Cell(**message), commands)
        except Exception:  # report it to the test, which shows it; serve the next cell
            _send({"event": "error", "detail": traceback.format_exc()})


if __name__ == "__main__":
    threading.current_thread().name = "fault-worker"
    main()
