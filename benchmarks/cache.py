"""Benchmark the cost of one ``get`` of flagrail's LayeredCache against the alternatives.

Run: ``.venv/bin/python benchmarks/cache.py`` (about a minute). It starts a throwaway
redis-server (never touches the machine's Redis) and prints one markdown table:

* memory hit: ``LayeredCache.get`` served by l1, including the flag checks of
  ``auth.cache.l1``, ``auth.cache.l1.shadow`` with a tenant, against cachetools
  ``TTLCache`` (bare, and behind the lock it needs to be thread-safe);
* Redis hit: ``LayeredCache.get`` served by l2 (l1 off) - the flag checks, a GET,
  verification of the keyed checksum, JSON decode, epoch and age checks, counters
  and the latency histogram - against a raw redis-py ``Redis.get`` of the very same
  bytes with the same client settings; a GET on a kept redis-py connection (how the
  layer reads: ``flags.cache.direct``), so flagrail's own work shows on its own; and
  dogpile.cache's Redis backend (``get_or_create``, pickle);
* Redis hit, asyncio: ``LayeredCache.aget`` served by l2 against a raw
  redis.asyncio GET of the same bytes, on one event loop;
* partial rollout: the same hits with the layer's flag at 50% rollout, so every
  check hashes the tenant (the bucketing path; the tenant is one inside the 50%),
  against the flag at 100%;
* 1,000 keys: the same hits spread over 1,000 distinct keys, read in turn, instead
  of one hot key (memory: against TTLCache over the same keys; Redis: against a raw
  GET of the same keys' bytes);
* dead Redis: the server is stopped. flagrail's circuit is open, so a call costs
  the flag checks, the breaker and the loader (a dict lookup here); dogpile
  reaches Redis on every call and raises ``ConnectionError``.

Workloads of a group are timed in rounds: each round times every workload over a
block of calls, in a shuffled order, so all share the machine's drift. The table
shows the best round (as timeit does: noise only adds time) and the median round.
Absolute targets use the best round; ratios are the median over rounds of the
ratio of two workloads within a round (a paired comparison, robust on a shared
machine), with the interquartile range of those ratios.
Options: ``--rounds N`` (default 31), ``--scale F`` to run F times more calls per block.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
from cachetools import TTLCache
from dogpile.cache import make_region
from redis.backoff import NoBackoff
from redis.retry import Retry

from flags.cache import LayeredCache, MemoryLayer, RedisLayer
from flags.cache.breaker import CircuitBreaker
from flags.cache.direct import DirectReader
from flags.client import FlagClient
from flags.testing.redis_server import RedisServer

KEY = "key-0123456789abcdef"
VALUE = {
    "key_id": "k_0123456789abcdef",
    "tenant": "acme",
    "scopes": ["exams:read", "exams:write", "dashboard"],
    "active": True,
    "expires": "2027-01-01T00:00:00+00:00",
}
MANY = [f"key-{n:04d}-0123456789ab" for n in range(1000)]  # the 1,000-keys rows
DATA = {KEY: VALUE, **{k: {**VALUE, "key_id": f"k_{k}"} for k in MANY}}
TENANT = "acme"
PARTIAL = 50  # rollout percentage of the partial-rollout rows
SECRET = b"benchmark-secret-0123456789abcdef"
PREFIX = "flagrail-bench:"


def flag_client(l1: bool, l2: bool, rollout: int = 100) -> FlagClient:
    """Layer flags on (at ``rollout`` percent) or off."""

    def state(on: bool) -> dict[str, Any]:
        return {"enabled": on, "rollout": rollout if on else 0}

    return FlagClient.from_snapshot(
        {
            "environment": "bench",
            "version": 1,
            "flags": {"auth.cache.l1": state(l1), "auth.cache.l2": state(l2)},
        }
    )


def rolled_out_tenant(client: FlagClient, flags: list[str]) -> str:
    """A tenant inside the partial rollout of every flag in ``flags``."""
    for n in range(10_000):
        tenant = f"tenant-{n}"
        if all(client.is_enabled(flag, tenant) for flag in flags):
            return tenant
    raise RuntimeError(f"no tenant inside the rollout of {flags}")


def in_turn(keys: list[str], fn: Callable[[str], object]) -> Callable[[], object]:
    """A workload that calls ``fn`` with the next of ``keys`` each time (cycling)."""
    following = itertools.cycle(keys).__next__
    return lambda: fn(following())


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


class Timing:
    """Seconds per call over the rounds: ``best`` (as timeit reports: noise only adds
    time) and ``median``; ``rounds`` keeps each round's figure for paired ratios."""

    def __init__(self, rounds: list[float]) -> None:
        self.rounds = rounds
        self.best = min(rounds)
        self.median = statistics.median(rounds)

    def ratio(self, baseline: Timing) -> tuple[float, float, float]:
        """Median, first and third quartile of this / baseline, round by round."""
        ratios = [a / b for a, b in zip(self.rounds, baseline.rounds, strict=True)]
        q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        return q2, q1, q3


def measure(
    workloads: dict[str, tuple[Any, int]],
    rounds: int,
    seed: int = 0,
    timer: Callable[[Any, int], float] = per_call,
) -> dict[str, Timing]:
    """Time each workload once per round, in a shuffled order each round; ``timer(fn,
    n)`` gives the seconds per call of one block."""
    for fn, n in workloads.values():  # warm up
        timer(fn, max(10, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    order = list(workloads)
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            fn, n = workloads[name]
            samples[name].append(timer(fn, n))
    return {name: Timing(values) for name, values in samples.items()}


async def aper_call(fn: Callable[[], Awaitable[object]], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


def measure_async_hits(
    url: str, cache: LayeredCache, storage_key: bytes, n: int, rounds: int
) -> dict[str, Timing]:
    """``measure`` of ``aget`` against a raw redis.asyncio GET, on one event loop."""
    loop = asyncio.new_event_loop()
    run = loop.run_until_complete
    raw = redis.asyncio.Redis.from_url(
        url,
        socket_timeout=0.05,
        socket_connect_timeout=0.05,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    try:
        assert run(cache.aget(KEY, TENANT)) == VALUE
        return measure(
            {
                "raw": (lambda: raw.get(storage_key), n),
                "flagrail": (lambda: cache.aget(KEY, TENANT), n),
            },
            rounds,
            seed=1,
            timer=lambda fn, count: run(aper_call(fn, count)),
        )
    finally:
        run(raw.aclose())
        run(cache.layers[1].aclose())  # type: ignore[attr-defined]
        loop.close()


def versus(timing: Timing, baseline: Timing) -> str:
    median, q1, q3 = timing.ratio(baseline)
    return f"{median - 1:+.1%} (IQR {q1 - 1:+.1%} to {q3 - 1:+.1%})"


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.2f} us"
    return f"{seconds * 1e3:.2f} ms"


def raises(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        try:
            return fn()
        except (redis.RedisError, OSError):
            return None

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    n_mem = int(20_000 * args.scale)
    n_redis = int(200 * args.scale)
    n_dead = int(10_000 * args.scale)
    n_dead_dogpile = int(100 * args.scale)

    server = RedisServer().start()
    caches: list[LayeredCache] = []
    try:

        def layered(l1: bool, l2: bool, rollout: int = 100) -> LayeredCache:
            cache = LayeredCache(
                "auth.cache",
                [
                    MemoryLayer(),
                    RedisLayer(
                        server.url,
                        secret=SECRET,
                        prefix=PREFIX,
                        breaker=CircuitBreaker(3, 3600.0),  # stays open for the dead run
                    ),
                ],
                DATA.get,
                flag_client(l1, l2, rollout),
            ).start(wait=5.0)
            caches.append(cache)
            return cache

        memory_cache = layered(True, True)
        redis_cache = layered(False, True)
        memory_partial = layered(True, True, PARTIAL)
        redis_partial = layered(False, True, PARTIAL)
        partial_tenant = rolled_out_tenant(
            memory_partial.flags,  # type: ignore[arg-type]
            ["auth.cache.l1", "auth.cache.l2"],
        )
        assert memory_cache.get(KEY, TENANT) == VALUE
        assert redis_cache.get(KEY, TENANT) == VALUE
        assert memory_partial.get(KEY, partial_tenant) == VALUE
        assert redis_partial.get(KEY, partial_tenant) == VALUE
        assert memory_partial.stats()["l1"]["hits"] == 0  # the first call filled it
        assert memory_partial.get(KEY, partial_tenant) == VALUE
        assert memory_partial.stats()["l1"]["hits"] == 1  # the tenant is inside: served by l1
        for key in MANY:  # fill every layer with the 1,000 keys
            assert memory_cache.get(key, TENANT) == DATA[key]
            assert redis_cache.get(key, TENANT) == DATA[key]
        assert redis_cache.stats()["l2"]["hits"] >= 1 or redis_cache.get(KEY, TENANT) == VALUE

        ttl_cache: TTLCache[str, Any] = TTLCache(maxsize=10_000, ttl=60)
        ttl_cache[KEY] = VALUE
        for key in MANY:
            ttl_cache[key] = DATA[key]
        lock = threading.Lock()

        def ttl_locked() -> object:
            with lock:
                return ttl_cache.get(KEY)

        raw = redis.Redis.from_url(
            server.url,
            socket_timeout=0.05,
            socket_connect_timeout=0.05,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        storage_key = redis_cache.layers[1].storage_key(KEY)  # type: ignore[attr-defined]
        envelope = raw.get(storage_key)
        assert envelope is not None
        many_keys = [redis_cache.layers[1].storage_key(k) for k in MANY]  # type: ignore[attr-defined]
        assert all(raw.get(k) is not None for k in many_keys)
        direct = DirectReader(server.url, socket_timeout=0.05, connect_timeout=0.05)
        assert direct.get(storage_key) == envelope

        region = make_region().configure(
            "dogpile.cache.redis",
            expiration_time=300,
            arguments={
                "url": server.url,
                "redis_expiration_time": 300,
                "socket_timeout": 0.05,
                "socket_connect_timeout": 0.05,
            },
        )
        dogpile_get = lambda: region.get_or_create(KEY, lambda: DATA.get(KEY))  # noqa: E731
        assert dogpile_get() == VALUE

        memory = measure(
            {
                "flagrail": (lambda: memory_cache.get(KEY, TENANT), n_mem),
                "ttl": (lambda: ttl_cache.get(KEY), n_mem),
                "ttl_locked": (ttl_locked, n_mem),
                "partial": (lambda: memory_partial.get(KEY, partial_tenant), n_mem),
                "flagrail_many": (in_turn(MANY, lambda k: memory_cache.get(k, TENANT)), n_mem),
                "ttl_many": (in_turn(MANY, ttl_cache.get), n_mem),
            },
            args.rounds,
        )
        remote = measure(
            {
                "raw": (lambda: raw.get(storage_key), n_redis),
                "direct": (lambda: direct.get(storage_key), n_redis),
                "flagrail": (lambda: redis_cache.get(KEY, TENANT), n_redis),
                "dogpile": (dogpile_get, n_redis),
                "partial": (lambda: redis_partial.get(KEY, partial_tenant), n_redis),
                "flagrail_many": (in_turn(MANY, lambda k: redis_cache.get(k, TENANT)), n_redis),
                "raw_many": (in_turn(many_keys, raw.get), n_redis),
            },
            args.rounds,
        )
        assert redis_cache.stats()["l2"]["hits"] > n_redis
        assert redis_partial.stats()["l2"]["hits"] > n_redis
        remote_async = measure_async_hits(
            server.url, redis_cache, storage_key, n_redis, args.rounds
        )

        server.stop()
        while redis_cache.layers[1].breaker.state == "closed":  # type: ignore[attr-defined]
            redis_cache.get(KEY, TENANT)
        errors_before = redis_cache.stats()["l2"]["errors"]
        dead = measure(
            {
                "flagrail": (lambda: redis_cache.get(KEY, TENANT), n_dead),
                "dogpile": (raises(dogpile_get), n_dead_dogpile),
            },
            max(3, args.rounds // 2),
        )
        assert redis_cache.get(KEY, TENANT) == VALUE
        assert redis_cache.stats()["l2"]["errors"] == errors_before  # never called Redis
        raw.close()
        direct.close()
    finally:
        for cache in caches:
            cache.close()
        server.close()

    mem, dead_ = {k: t.best for k, t in memory.items()}, {k: t.best for k, t in dead.items()}
    overhead = remote["flagrail"].ratio(remote["raw"])[0] - 1
    rows = [
        ("memory hit", "flagrail LayeredCache.get (l1 + flag checks)", memory["flagrail"],
         f"target <= 1.2 us: {'met' if mem['flagrail'] <= 1.2e-6 else 'MISSED'}"),
        ("memory hit", "cachetools TTLCache.get (not thread-safe)", memory["ttl"],
         f"flagrail {versus(memory['flagrail'], memory['ttl'])}"),
        ("memory hit", "cachetools TTLCache.get under a Lock", memory["ttl_locked"],
         f"flagrail {versus(memory['flagrail'], memory['ttl_locked'])}"),
        ("memory hit, partial rollout", f"flagrail LayeredCache.get (l1 at {PARTIAL}%: "
         "tenant hashed)", memory["partial"],
         f"{versus(memory['partial'], memory['flagrail'])} vs the flag at 100%"),
        ("memory hit, 1,000 keys", "flagrail LayeredCache.get (l1), keys in turn",
         memory["flagrail_many"],
         f"{versus(memory['flagrail_many'], memory['flagrail'])} vs one hot key"),
        ("memory hit, 1,000 keys", "cachetools TTLCache.get, keys in turn", memory["ttl_many"],
         f"flagrail {versus(memory['flagrail_many'], memory['ttl_many'])}"),
        ("Redis hit", "raw redis-py GET of the same bytes (Redis.get)", remote["raw"], "baseline"),
        ("Redis hit", "GET on a kept redis-py connection (how l2 reads)", remote["direct"],
         f"{versus(remote['direct'], remote['raw'])} vs raw GET"),
        ("Redis hit", "flagrail LayeredCache.get (l2: flags, verify, decode)", remote["flagrail"],
         f"{versus(remote['flagrail'], remote['raw'])} vs raw GET (target <= +15%: "
         f"{'met' if overhead <= 0.15 else 'MISSED'}); "
         f"{versus(remote['flagrail'], remote['direct'])} vs the kept-connection GET"),
        ("Redis hit", "dogpile.cache redis get_or_create (pickle)", remote["dogpile"],
         f"{versus(remote['dogpile'], remote['raw'])} vs raw GET"),
        ("Redis hit, partial rollout", f"flagrail LayeredCache.get (l2 at {PARTIAL}%: "
         "tenant hashed)", remote["partial"],
         f"{versus(remote['partial'], remote['flagrail'])} vs the flag at 100%"),
        ("Redis hit, 1,000 keys", "raw redis-py GET, keys in turn", remote["raw_many"],
         "baseline"),
        ("Redis hit, 1,000 keys", "flagrail LayeredCache.get (l2), keys in turn",
         remote["flagrail_many"],
         f"{versus(remote['flagrail_many'], remote['raw_many'])} vs raw GET; "
         f"{versus(remote['flagrail_many'], remote['flagrail'])} vs one hot key"),
        ("Redis hit, asyncio", "raw redis.asyncio GET of the same bytes", remote_async["raw"],
         "baseline"),
        ("Redis hit, asyncio", "flagrail LayeredCache.aget (l2)", remote_async["flagrail"],
         f"{versus(remote_async['flagrail'], remote_async['raw'])} vs raw GET"),
        ("dead Redis", "flagrail, circuit open (flags + breaker + loader)", dead["flagrail"],
         f"target <= 5 us: {'met' if dead_['flagrail'] <= 5e-6 else 'MISSED'}"),
        ("dead Redis", "dogpile.cache redis (raises ConnectionError)", dead["dogpile"],
         f"x{dead_['dogpile'] / dead_['flagrail']:.0f} flagrail's"),
    ]  # fmt: skip
    print(environment())
    print()
    print(f"| workload | implementation | per get, best of {args.rounds} rounds | median | notes |")
    print("|---|---|---:|---:|---|")
    for workload, impl, timing, note in rows:
        print(f"| {workload} | {impl} | {fmt(timing.best)} | {fmt(timing.median)} | {note} |")
    return 0


def environment() -> str:
    try:
        version = subprocess.run(
            [RedisServer().binary or "redis-server", "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()[2]
    except (OSError, IndexError):
        version = "?"
    return (
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; "
        f"redis-server {version.removeprefix('v=')} on localhost (throwaway); "
        f"redis-py {redis.__version__}"
    )


if __name__ == "__main__":
    sys.exit(main())
