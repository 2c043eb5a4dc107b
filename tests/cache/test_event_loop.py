"""``aget`` never blocks its event loop on Redis: with asyncio's debug mode and a 5 ms
slow-callback threshold, no slow callback of cache traffic (hits, misses, fills, shadow
judgements and verifications that drop wrong entries, refused writes) made a blocking
call, in every on/off combination of the layer flags, with a sync and an async loader.
The Redis server stalls for 8 ms at a time (``DEBUG SLEEP``) throughout, so a blocking
Redis call on the loop would hold it for milliseconds.

A callback can also be slow without blocking (two cores shared with other suites, the
GIL, debug mode recording a stack for every task). So the test also watches every
socket call made on the loop's thread: one on a socket in blocking mode (a timeout
other than 0, as redis-py's sync clients use) is a blocking call, and a slow callback
is the cache's when one happened during it. Every such call fails the test too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from flags.cache import Entry, LayeredCache
from flags.testing.client import TestFlagClient
from flags.testing.redis_server import RedisServer

from .conftest import CacheFactory
from .support import L1, L2, AsyncSource, Source, on

pytestmark = pytest.mark.redis

THRESHOLD = 0.005
STALL = 0.008
KEYS = [f"key-{n}" for n in range(120)]
DATA = {k: {"tenant": f"t{n % 5}", "scopes": ["read", "write"], "n": n} for n, k in enumerate(KEYS)}
_TOOK = re.compile(r"took (\d+\.\d+) seconds")
_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default
_SOCKET_CALLS = ("connect", "recv", "recv_into", "send", "sendall")


class Watch(logging.Handler):
    """asyncio's "Executing <handle> took N seconds" warnings, and every blocking socket
    call made on the thread in ``loop_thread`` (set while a loop runs)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.loop_thread: int | None = None
        self.warnings: list[tuple[float, float, str]] = []  # (ended, took, message)
        self.blocking: list[tuple[float, float, str]] = []  # (started, ended, call)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        found = _TOOK.search(message)
        if message.startswith("Executing") and found:
            self.warnings.append((time.perf_counter(), float(found.group(1)), message))

    def wrap(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def watched(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self.loop_thread or sock.gettimeout() == 0.0:
                return call(sock, *args, **kwargs)
            started = time.perf_counter()
            try:
                return call(sock, *args, **kwargs)
            finally:
                self.blocking.append((started, time.perf_counter(), f"socket.{name}"))

        return watched

    def caused_by_the_cache(self) -> list[str]:
        """The slow callbacks during which the loop's thread made a blocking call."""
        return [
            message
            for ended, took, message in self.warnings
            if any(s <= ended and e >= ended - took for s, e, _ in self.blocking)
        ]


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    handler = Watch()
    for name in _SOCKET_CALLS:
        monkeypatch.setattr(socket.socket, name, handler.wrap(name, getattr(socket.socket, name)))
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def run_debug(coroutine: Any, watch: Watch) -> Any:
    """Run ``coroutine`` on a new loop in debug mode with the 5 ms threshold, its default
    executor's threads started first (``asyncio.to_thread`` starts them on demand)."""
    with asyncio.Runner(debug=True) as runner:
        runner.get_loop().slow_callback_duration = THRESHOLD
        runner.run(_warm_executor())
        watch.loop_thread = threading.get_ident()
        try:
            return runner.run(coroutine)
        finally:
            watch.loop_thread = None


async def _warm_executor() -> None:
    gate = threading.Barrier(_EXECUTOR_THREADS, timeout=5)
    await asyncio.gather(*(asyncio.to_thread(gate.wait) for _ in range(_EXECUTOR_THREADS)))


async def spread(coroutines: list[Any]) -> list[Any]:
    """Run ``coroutines`` concurrently, starting one per loop step: in debug mode creating
    a task records its stack, and thirty at once would be the test's own slow step."""
    tasks = []
    for coroutine in coroutines:
        tasks.append(asyncio.ensure_future(coroutine))
        await asyncio.sleep(0)
    return list(await asyncio.gather(*tasks))


async def _quiet(coroutine: Any) -> Any:
    """The broken writer's own write: a timeout on a loaded machine is not the test's."""
    try:
        return await coroutine
    except Exception as exc:
        return exc


async def traffic(cache: LayeredCache, flags: TestFlagClient) -> list[Any]:
    """Cold reads, hits, a broken writer's entries (verified and shadowed), closing the
    loop's clients at the end. Returns every answer."""
    answers: list[Any] = []
    for batch in range(0, len(KEYS), 30):
        answers += await spread([cache.aget(k) for k in KEYS[batch : batch + 30]])
    answers += await spread([cache.aget(k) for k in KEYS])
    layer: Any = cache.layers[1]
    broken = [Entry({**DATA[key], "scopes": []}, time.time()) for key in KEYS]
    await spread([_quiet(layer.aset(key, broken[n])) for n, key in enumerate(KEYS[:40])])
    cache.layers[0].clear()
    answers += await spread([cache.aget(k) for k in KEYS[:60]])
    flags.set(f"{L2}.shadow", True)
    await spread([_quiet(layer.aset(k, broken[n + 40])) for n, k in enumerate(KEYS[40:60])])
    cache.layers[0].clear()
    answers += await spread([cache.aget(k) for k in KEYS[:80]])
    while cache._tasks:  # verifications of an async loader run on this loop
        await asyncio.gather(*list(cache._tasks))
    await layer.aclose()
    return answers


class Stall:
    """A thread that keeps the Redis server stalling: ``DEBUG SLEEP`` of ``STALL`` seconds
    with 1 ms gaps, so every Redis call waits milliseconds."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.stalls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-stall", daemon=True)

    def __enter__(self) -> Stall:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.client.execute_command("DEBUG", "SLEEP", STALL)
            self.stalls += 1


@pytest.mark.flag_matrix(L1, L2)
@pytest.mark.parametrize("loader", ["sync", "async"])
def test_aget_traffic__no_callback_blocks_on_io_in_debug_mode(
    make_cache: CacheFactory,
    redis_server: RedisServer,
    layer_flags: TestFlagClient,
    watch: Watch,
    loader: str,
) -> None:
    """Every Redis call of aget is awaited; sync loaders and layers run in threads."""
    source = Source(DATA) if loader == "sync" else AsyncSource(DATA)
    cache = make_cache(url=redis_server.url, loader=source, verify_share=1.0, socket_timeout=1.0)
    with Stall(redis_server.url) as stall:
        answers = run_debug(traffic(cache, layer_flags), watch)
        assert cache.wait_idle(10.0)
    assert stall.stalls > 0
    assert watch.caused_by_the_cache() == []
    assert watch.blocking == []
    assert len(answers) == 2 * len(KEYS) + 140 and None not in answers
    st = cache.stats()["l2"]
    if on(layer_flags, L2):
        assert st["mismatch_verify"] + st["mismatch_shadow"] > 0  # drops did happen


def test_detector__a_blocking_redis_call_on_the_loop__is_reported(
    redis_server: RedisServer, watch: Watch
) -> None:
    """The harness sees a callback that blocks on a stalled Redis: the test above can fail."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)

    async def blocks() -> None:
        client.get("any")  # the blocking call under test, deliberately on the loop

    try:
        with Stall(redis_server.url):
            # The stall comes and goes: a GET between two stalls may answer under the
            # threshold, so block until one lands in a stall (bounded).
            for _ in range(50):
                run_debug(blocks(), watch)
                if watch.caused_by_the_cache():
                    break
    finally:
        client.close()
    assert watch.caused_by_the_cache() != []
