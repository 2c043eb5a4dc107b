"""The memory layer: TTLs, bounds, purges, thread safety."""

from __future__ import annotations

import threading
import time

import pytest

from flags.cache.codec import Entry
from flags.cache.memory import MemoryLayer
from flags.errors import ValidationError

from .support import wait_until


def entry(value: object = "v", source: str | None = None) -> Entry:
    return Entry(value, time.time(), value is None, source)


def test_memory__set_then_get__returns_the_entry() -> None:
    """What was stored comes back with its metadata."""
    layer = MemoryLayer()
    layer.set("k", entry({"a": 1}, source="l2"))
    got = layer.get("k")
    assert got is not None and got.value == {"a": 1} and got.source == "l2"


def test_memory__ttl_elapsed__misses() -> None:
    """An entry past its TTL is not returned (and is dropped)."""
    layer = MemoryLayer(ttl=60.0)
    layer.set("k", entry(), ttl=0.02)
    assert layer.get("k") is not None
    assert wait_until(lambda: layer.get("k") is None, timeout=1.0)
    assert len(layer) == 0


def test_memory__per_entry_ttl__never_exceeds_the_layer_ttl() -> None:
    """A caller asking for longer than the layer allows gets the layer's TTL."""
    layer = MemoryLayer(ttl=0.02)
    stored = layer.set("k", entry(), ttl=3600)
    assert stored.expires - stored.stored == pytest.approx(0.02)


def test_memory__over_max_entries__evicts_the_oldest_write() -> None:
    """The bound holds; the first written goes first."""
    layer = MemoryLayer(max_entries=3)
    for key in "abcd":
        layer.set(key, entry(key))
    assert len(layer) == 3
    assert layer.get("a") is None and layer.get("d") is not None


def test_memory__purge_source__drops_only_entries_from_that_layer() -> None:
    """What came from a killed layer goes; what came from the loader stays."""
    layer = MemoryLayer()
    layer.set("from-l2", entry(source="l2"))
    layer.set("from-loader", entry(source=None))
    assert layer.purge_source("l2") == 1
    assert layer.get("from-l2") is None and layer.get("from-loader") is not None


def test_memory__clear__keeps_the_entries_mapping_object() -> None:
    """Hot paths bind ``entries.get`` once; clear must not replace the mapping."""
    layer = MemoryLayer()
    entries = layer.entries
    layer.set("k", entry())
    layer.clear()
    assert layer.entries is entries and len(entries) == 0


def test_memory__concurrent_writers_and_readers__stay_bounded_and_never_raise() -> None:
    """Eight threads hammering one small layer: no exception, bound respected."""
    layer = MemoryLayer(max_entries=50)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(2000):
                key = f"k{(i * 7 + n) % 120}"
                layer.set(key, entry(i))
                layer.get(key)
                if i % 50 == 0:
                    layer.delete(key)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(layer) <= 50


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"ttl": 0}, {"max_entries": 1.5}])
def test_memory__bad_bounds__raise_validation_error(kwargs: dict[str, float]) -> None:
    """Bounds must be positive."""
    with pytest.raises(ValidationError):
        MemoryLayer(**kwargs)  # type: ignore[arg-type]
