"""Benchmark the cost of one ``get`` of flagrail's LayeredCache against the alternatives.

Run: ``.venv/bin/python benchmarks/cache.py`` (about 30 s). It starts a throwaway
redis-server (never touches the machine's Redis) and prints one markdown table:

* memory hit: ``LayeredCache.get`` served by l1, including the flag checks of
  ``auth.cache.l1``, ``auth.cache.l1.shadow`` with a tenant, against cachetools
  ``TTLCache`` (bare, and behind the lock it needs to be thread-safe);
* Redis hit: ``LayeredCache.get`` served by l2 (l1 off) - a GET, verification of
  the keyed checksum, JSON decode, epoch check, counters - against a raw redis-py
  GET of the very same bytes with the same client settings, and dogpile.cache's
  Redis backend (``get_or_create``, pickle);
* dead Redis: the server is stopped. flagrail's circuit is open, so a call costs
  the flag checks, the breaker and the loader (a dict lookup here); dogpile
  reaches Redis on every call and raises ``ConnectionError``.

Each workload is timed in interleaved repeats (mean time per call of each); the
table shows the best repeat (as timeit does: noise only adds time) and the median.
Targets and ratios use the best.
Options: ``--repeats N`` (default 7), ``--scale F`` to run F times more iterations.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from cachetools import TTLCache
from dogpile.cache import make_region
from redis.backoff import NoBackoff
from redis.retry import Retry

from flags.cache import LayeredCache, MemoryLayer, RedisLayer
from flags.cache.breaker import CircuitBreaker
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
DATA = {KEY: VALUE}
TENANT = "acme"
SECRET = b"benchmark-secret-0123456789abcdef"
PREFIX = "flagrail-bench:"


def flag_client(l1: bool, l2: bool) -> FlagClient:
    def state(on: bool) -> dict[str, Any]:
        return {"enabled": on, "rollout": 100 if on else 0}

    return FlagClient.from_snapshot(
        {
            "environment": "bench",
            "version": 1,
            "flags": {"auth.cache.l1": state(l1), "auth.cache.l2": state(l2)},
        }
    )


def per_call(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


class Timing:
    """Seconds per call over the repeats: ``best`` (as timeit reports: noise only adds
    time) and ``median``."""

    def __init__(self, samples: list[float]) -> None:
        self.best = min(samples)
        self.median = statistics.median(samples)


def measure(
    workloads: dict[str, tuple[Callable[[], object], int]], repeats: int
) -> dict[str, Timing]:
    """Time each workload ``repeats`` times, interleaved so they share the machine's drift."""
    for fn, n in workloads.values():  # warm up
        per_call(fn, max(10, n // 10))
    samples: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(repeats):
        for name, (fn, n) in workloads.items():
            samples[name].append(per_call(fn, n))
    return {name: Timing(values) for name, values in samples.items()}


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
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    n_mem = int(100_000 * args.scale)
    n_redis = int(2_000 * args.scale)
    n_dead = int(50_000 * args.scale)
    n_dead_dogpile = int(500 * args.scale)

    server = RedisServer().start()
    caches: list[LayeredCache] = []
    try:

        def layered(l1: bool, l2: bool) -> LayeredCache:
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
                flag_client(l1, l2),
            ).start(wait=5.0)
            caches.append(cache)
            return cache

        memory_cache = layered(True, True)
        redis_cache = layered(False, True)
        assert memory_cache.get(KEY, TENANT) == VALUE
        assert redis_cache.get(KEY, TENANT) == VALUE
        assert redis_cache.stats()["l2"]["hits"] >= 1 or redis_cache.get(KEY, TENANT) == VALUE

        ttl_cache: TTLCache[str, Any] = TTLCache(maxsize=10_000, ttl=60)
        ttl_cache[KEY] = VALUE
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
            },
            args.repeats,
        )
        remote = measure(
            {
                "raw": (lambda: raw.get(storage_key), n_redis),
                "flagrail": (lambda: redis_cache.get(KEY, TENANT), n_redis),
                "dogpile": (dogpile_get, n_redis),
            },
            args.repeats,
        )
        assert redis_cache.stats()["l2"]["hits"] > n_redis

        server.stop()
        while redis_cache.layers[1].breaker.state == "closed":  # type: ignore[attr-defined]
            redis_cache.get(KEY, TENANT)
        errors_before = redis_cache.stats()["l2"]["errors"]
        dead = measure(
            {
                "flagrail": (lambda: redis_cache.get(KEY, TENANT), n_dead),
                "dogpile": (raises(dogpile_get), n_dead_dogpile),
            },
            max(3, args.repeats // 2),
        )
        assert redis_cache.get(KEY, TENANT) == VALUE
        assert redis_cache.stats()["l2"]["errors"] == errors_before  # never called Redis
        raw.close()
    finally:
        for cache in caches:
            cache.close()
        server.close()

    mem, rem, dead_ = (
        {k: t.best for k, t in memory.items()},
        {k: t.best for k, t in remote.items()},
        {k: t.best for k, t in dead.items()},
    )
    overhead = rem["flagrail"] / rem["raw"] - 1
    rows = [
        ("memory hit", "flagrail LayeredCache.get (l1 + flag checks)", memory["flagrail"],
         f"target <= 2 us: {'met' if mem['flagrail'] <= 2e-6 else 'MISSED'}"),
        ("memory hit", "cachetools TTLCache.get (not thread-safe)", memory["ttl"],
         f"flagrail x{mem['flagrail'] / mem['ttl']:.1f}"),
        ("memory hit", "cachetools TTLCache.get under a Lock", memory["ttl_locked"],
         f"flagrail x{mem['flagrail'] / mem['ttl_locked']:.1f}"),
        ("Redis hit", "raw redis-py GET of the same bytes", remote["raw"], "baseline"),
        ("Redis hit", "flagrail LayeredCache.get (l2: verify, decode)", remote["flagrail"],
         f"{overhead:+.1%} vs raw GET (target <= +15%: "
         f"{'met' if overhead <= 0.15 else 'MISSED'})"),
        ("Redis hit", "dogpile.cache redis get_or_create (pickle)", remote["dogpile"],
         f"{rem['dogpile'] / rem['raw'] - 1:+.1%} vs raw GET"),
        ("dead Redis", "flagrail, circuit open (flags + breaker + loader)", dead["flagrail"],
         f"target <= 5 us: {'met' if dead_['flagrail'] <= 5e-6 else 'MISSED'}"),
        ("dead Redis", "dogpile.cache redis (raises ConnectionError)", dead["dogpile"],
         f"x{dead_['dogpile'] / dead_['flagrail']:.0f} flagrail's"),
    ]  # fmt: skip
    print(environment())
    print()
    print(f"| workload | implementation | per get, best of {args.repeats} | median | notes |")
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
