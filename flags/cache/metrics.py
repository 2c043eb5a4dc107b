"""Prometheus metrics of every cache in the process, on the default registry.

Hot paths bump plain integer attributes of a ``LayerStats`` bound once per
layer at construction; one collector registered on ``prometheus_client.REGISTRY``
turns them into metric families at scrape time. So a memory hit pays for an
attribute increment, not for a lock and a label lookup. Like ``FlagClient``
counts, increments are not atomic: under heavy multi-threaded use a count may
lose a few increments; it never goes backwards.

Families (labels ``cache``, ``layer`` and where noted a ``reason``/``check``)::

    flagrail_cache_hits_total               a layer answered
    flagrail_cache_misses_total             a layer was asked and had nothing
    flagrail_cache_errors_total             a layer call failed (refused, timeout, OOM...)
    flagrail_cache_corrupt_reads_total      reason: format | checksum | payload | bookkeeping
    flagrail_cache_stale_reads_total        reason: schema | epoch | age
    flagrail_cache_mismatches_total         check: verify | shadow | write
    flagrail_cache_verifications_total      check: verify | shadow | write
    flagrail_cache_bypasses_total           reason: circuit | guard
    flagrail_cache_writes_total
    flagrail_cache_latency_seconds          histogram per layer (memory hits sampled 1 in 16)
    flagrail_cache_loads_total              loader calls, per cache
    flagrail_cache_invalidations_total      per cache; result: ok | failed
    flagrail_cache_invalidation_channel_up  gauge per cache: 1 while pub/sub is heard
    flagrail_cache_guard_breaches_total     per flag
    flagrail_cache_guard_kills_total        per flag; result: killed | already_killed | failed
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "CacheStats", "GuardStats", "LayerStats", "register_collector"]

LATENCY_BUCKETS = (
    1e-6,
    2.5e-6,
    5e-6,
    1e-5,
    2.5e-5,
    5e-5,
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    1e-2,
    2.5e-2,
    5e-2,
    0.1,
    0.25,
    0.5,
    1.0,
)

_REASONED = {
    "corrupt": (
        "flagrail_cache_corrupt_reads",
        "reason",
        ("format", "checksum", "payload", "bookkeeping"),
    ),
    "stale": ("flagrail_cache_stale_reads", "reason", ("schema", "epoch", "age")),
    "mismatches": ("flagrail_cache_mismatches", "check", ("verify", "shadow", "write")),
    "verifications": ("flagrail_cache_verifications", "check", ("verify", "shadow", "write")),
    "bypasses": ("flagrail_cache_bypasses", "reason", ("circuit", "guard")),
}


class LayerStats:
    """Counters and a latency histogram of one layer of one cache. Not locked."""

    __slots__ = (
        "buckets",
        "bypass_circuit",
        "bypass_guard",
        "corrupt_bookkeeping",
        "corrupt_checksum",
        "corrupt_format",
        "corrupt_payload",
        "errors",
        "hits",
        "latency_count",
        "latency_sum",
        "layer",
        "mismatch_shadow",
        "mismatch_verify",
        "mismatch_write",
        "misses",
        "stale_age",
        "stale_epoch",
        "stale_schema",
        "verify_shadow",
        "verify_verify",
        "verify_write",
        "writes",
    )

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.hits = self.misses = self.errors = self.writes = 0
        self.corrupt_format = self.corrupt_checksum = self.corrupt_payload = 0
        self.corrupt_bookkeeping = 0
        self.stale_schema = self.stale_epoch = self.stale_age = 0
        self.mismatch_verify = self.mismatch_shadow = self.mismatch_write = 0
        self.verify_verify = self.verify_shadow = self.verify_write = 0
        self.bypass_circuit = self.bypass_guard = 0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def counters(self) -> dict[str, int]:
        """What rollout-plan guards read, per layer flag: ``reads`` (answered reads),
        ``hits``, ``corrupt_reads``, ``mismatches`` and ``errors`` (failed or skipped
        calls)."""
        return {
            "reads": self.hits + self.misses,
            "hits": self.hits,
            "corrupt_reads": self.corrupt_format
            + self.corrupt_checksum
            + self.corrupt_payload
            + self.corrupt_bookkeeping,
            "mismatches": self.mismatch_verify + self.mismatch_shadow + self.mismatch_write,
            "errors": self.errors + self.bypass_circuit,
        }

    def count(self, kind: str, reason: str) -> int:
        """One reasoned counter, e.g. ``count("corrupt", "checksum")``."""
        prefix = {
            "corrupt": "corrupt_",
            "stale": "stale_",
            "mismatches": "mismatch_",
            "verifications": "verify_",
            "bypasses": "bypass_",
        }[kind]
        return int(getattr(self, prefix + reason))

    def as_dict(self) -> dict[str, Any]:
        """Every counter by name (reasoned ones as ``corrupt_checksum`` etc.)."""
        return {
            name: getattr(self, name)
            for name in self.__slots__
            if name not in {"buckets", "layer", "latency_sum"}
        } | {"latency_sum": self.latency_sum}


class CacheStats:
    """The stats of one ``LayeredCache``: one ``LayerStats`` per layer, plus its own."""

    def __init__(self, cache: str, layers: list[str]) -> None:
        self.cache = cache
        self.layers = {name: LayerStats(name) for name in layers}
        self.loads = 0
        self.invalidations_ok = 0
        self.invalidations_failed = 0
        # Returns the cache's channel state (a weak method: None once the cache is gone).
        self.channel_probe: Callable[[], Callable[[], bool] | None] | None = None
        register_collector()
        _sources.add(self)


class GuardStats:
    """Breach and kill counts of one ``Guard``, by flag key."""

    def __init__(self) -> None:
        self.breaches: dict[str, int] = {}
        self.kills: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        register_collector()
        _guard_sources.add(self)

    def breach(self, flag: str) -> None:
        with self._lock:
            self.breaches[flag] = self.breaches.get(flag, 0) + 1

    def kill(self, flag: str, result: str) -> None:
        with self._lock:
            self.kills[(flag, result)] = self.kills.get((flag, result), 0) + 1


_sources: weakref.WeakSet[CacheStats] = weakref.WeakSet()
_guard_sources: weakref.WeakSet[GuardStats] = weakref.WeakSet()
_registered = False
_register_lock = threading.Lock()


class _CacheCollector(Collector):
    """Sums the stats of every live cache by (cache, layer) at scrape time."""

    def collect(self) -> Iterator[Any]:
        per_layer: dict[tuple[str, str], LayerStats] = {}
        per_cache: dict[str, list[float]] = {}
        for stats in list(_sources):
            cache = per_cache.setdefault(stats.cache, [0, 0, 0, 0])
            cache[0] += stats.loads
            cache[1] += stats.invalidations_ok
            cache[2] += stats.invalidations_failed
            probe = stats.channel_probe() if stats.channel_probe is not None else None
            cache[3] = max(cache[3], 1 if probe is not None and probe() else 0)
            for name, layer in list(stats.layers.items()):
                total = per_layer.get((stats.cache, name))
                if total is None:
                    total = per_layer[(stats.cache, name)] = LayerStats(name)
                _add(total, layer)
        labels = ["cache", "layer"]
        for attr, family in (
            ("hits", "flagrail_cache_hits"),
            ("misses", "flagrail_cache_misses"),
            ("errors", "flagrail_cache_errors"),
            ("writes", "flagrail_cache_writes"),
        ):
            metric = CounterMetricFamily(family, f"Cache layer {attr}", labels=labels)
            for (cache_name, layer_name), s in per_layer.items():
                metric.add_metric([cache_name, layer_name], getattr(s, attr))
            yield metric
        for kind, (family, label, reasons) in _REASONED.items():
            metric = CounterMetricFamily(family, f"Cache layer {kind}", labels=[*labels, label])
            for (cache_name, layer_name), s in per_layer.items():
                for reason in reasons:
                    metric.add_metric([cache_name, layer_name, reason], s.count(kind, reason))
            yield metric
        latency = HistogramMetricFamily(
            "flagrail_cache_latency_seconds", "Cache layer call latency", labels=labels
        )
        for (cache_name, layer_name), s in per_layer.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), s.buckets, strict=True):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            latency.add_metric([cache_name, layer_name], buckets, s.latency_sum)
        yield latency
        loads = CounterMetricFamily("flagrail_cache_loads", "Loader calls", labels=["cache"])
        inval = CounterMetricFamily(
            "flagrail_cache_invalidations", "Invalidations sent", labels=["cache", "result"]
        )
        up = GaugeMetricFamily(
            "flagrail_cache_invalidation_channel_up",
            "1 while the invalidation channel is heard",
            labels=["cache"],
        )
        for cache_name, (n_loads, ok, failed, channel) in per_cache.items():
            loads.add_metric([cache_name], n_loads)
            inval.add_metric([cache_name, "ok"], ok)
            inval.add_metric([cache_name, "failed"], failed)
            up.add_metric([cache_name], channel)
        yield loads
        yield inval
        yield up
        breaches = CounterMetricFamily(
            "flagrail_cache_guard_breaches", "Guard threshold breaches", labels=["flag"]
        )
        kills = CounterMetricFamily(
            "flagrail_cache_guard_kills", "Guard kill requests", labels=["flag", "result"]
        )
        b_total: dict[str, int] = {}
        k_total: dict[tuple[str, str], int] = {}
        for guard in list(_guard_sources):
            with guard._lock:
                for flag, n in guard.breaches.items():
                    b_total[flag] = b_total.get(flag, 0) + n
                for key, n in guard.kills.items():
                    k_total[key] = k_total.get(key, 0) + n
        for flag, n in b_total.items():
            breaches.add_metric([flag], n)
        for (flag, result), n in k_total.items():
            kills.add_metric([flag, result], n)
        yield breaches
        yield kills

    def describe(self) -> Iterator[Any]:
        return iter(())


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _add(total: LayerStats, layer: LayerStats) -> None:
    for name in LayerStats.__slots__:
        if name == "layer":
            continue
        if name == "buckets":
            total.buckets = [a + b for a, b in zip(total.buckets, layer.buckets, strict=True)]
        else:
            setattr(total, name, getattr(total, name) + getattr(layer, name))


def register_collector() -> None:
    """Register the cache collector on the default registry (once per process)."""
    global _registered
    with _register_lock:
        if not _registered:
            REGISTRY.register(_CacheCollector())
            _registered = True
