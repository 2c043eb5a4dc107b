"""Metrics: plain counters bound per layer, turned into Prometheus families at scrape time."""

from __future__ import annotations

from prometheus_client import REGISTRY

from flags.cache.metrics import LATENCY_BUCKETS, CacheStats, GuardStats, LayerStats


def sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_layer_stats__observe__fills_the_right_bucket() -> None:
    """Latencies land in the first bucket whose bound is not below them."""
    stats = LayerStats("l2")
    stats.observe(3e-6)
    stats.observe(10.0)
    assert stats.buckets[LATENCY_BUCKETS.index(5e-6)] == 1
    assert stats.buckets[-1] == 1 and stats.latency_count == 2


def test_collector__sums_caches_of_the_same_name() -> None:
    """Two caches named alike (two instances in one process) add up, labelled once."""
    a = CacheStats("metrics.test.cache", ["l1", "l2"])
    b = CacheStats("metrics.test.cache", ["l1", "l2"])
    a.layers["l1"].hits += 3
    b.layers["l1"].hits += 4
    a.layers["l2"].corrupt_checksum += 1
    a.layers["l2"].observe(2e-4)
    labels = {"cache": "metrics.test.cache", "layer": "l1"}
    assert sample("flagrail_cache_hits_total", labels) == 7
    assert (
        sample(
            "flagrail_cache_corrupt_reads_total",
            {"cache": "metrics.test.cache", "layer": "l2", "reason": "checksum"},
        )
        == 1
    )
    assert (
        sample(
            "flagrail_cache_latency_seconds_bucket",
            {"cache": "metrics.test.cache", "layer": "l2", "le": "+Inf"},
        )
        == 1
    )
    assert b.layers  # keep both alive until here


def test_collector__guard_counts_by_flag_and_result() -> None:
    """Breaches and kill outcomes are exposed per flag."""
    stats = GuardStats()
    stats.breach("metrics.test.l2")
    stats.kill("metrics.test.l2", "already_killed")
    assert sample("flagrail_cache_guard_breaches_total", {"flag": "metrics.test.l2"}) == 1
    assert (
        sample(
            "flagrail_cache_guard_kills_total",
            {"flag": "metrics.test.l2", "result": "already_killed"},
        )
        == 1
    )
