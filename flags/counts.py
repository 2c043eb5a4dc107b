"""Process-wide evaluation counts over every ``FlagClient``, live or closed.

Each client keeps its own ``{flag key: [off, on]}`` counters (an
``EvaluationCounts``), incremented by its checks without a lock. The pytest
plugin's ``--flag-coverage`` reads the sum over the process: live clients are
read where they are; a client's counts move to a retired total when it is
closed or collected.

Typed flags also count the variants they served: ``EvaluationCounts.variants`` is
``{flag key: {variant: [served]}}``, every variant of a compiled flag entered at
zero, so a variant never served is visible; ``variant_counts`` sums them.
"""

from __future__ import annotations

import threading
import weakref

__all__ = ["EvaluationCounts", "evaluation_counts", "retire", "variant_counts"]

# Counts of clients already closed or collected. Guarded by _retired_lock.
_live_counts: weakref.WeakSet[EvaluationCounts] = weakref.WeakSet()
_retired_counts: dict[str, list[int]] = {}
_retired_variants: dict[str, dict[str, int]] = {}
_retired_lock = threading.Lock()


class EvaluationCounts(dict[str, list[int]]):
    """Per-flag ``[off, on]`` evaluation counters of one client, registered process-wide
    on creation (weak-referenceable, compared by identity)."""

    __slots__ = ("__weakref__", "variants")
    __hash__ = object.__hash__  # identity, so live counters can sit in a WeakSet
    __eq__ = object.__eq__

    def __init__(self) -> None:
        super().__init__()
        # {flag key: {variant name: [served]}} of typed flags.
        self.variants: dict[str, dict[str, list[int]]] = {}
        _live_counts.add(self)


def retire(counts: EvaluationCounts) -> None:
    """Move ``counts`` into the process's retired total and clear them. Thread-safe."""
    with _retired_lock:
        for key, (off, on) in list(counts.items()):
            slot = _retired_counts.setdefault(key, [0, 0])
            slot[0] += off
            slot[1] += on
        counts.clear()
        for key, served in list(counts.variants.items()):
            total = _retired_variants.setdefault(key, {})
            for name, (n,) in list(served.items()):
                total[name] = total.get(name, 0) + n
        counts.variants.clear()


def evaluation_counts() -> dict[str, tuple[int, int]]:
    """Process-wide ``{flag key: (off, on)}`` over every FlagClient, live or closed.

    Counts are approximate under heavy multi-threaded use (increments are not atomic).
    """
    with _retired_lock:
        total = {k: [off, on] for k, (off, on) in _retired_counts.items()}
        live = list(_live_counts)
    for counts in live:
        for key, (off, on) in list(counts.items()):
            slot = total.setdefault(key, [0, 0])
            slot[0] += off
            slot[1] += on
    return {k: (v[0], v[1]) for k, v in total.items() if v[0] or v[1]}


def variant_counts() -> dict[str, dict[str, int]]:
    """Process-wide ``{flag key: {variant: times served}}`` of typed flags over every
    FlagClient, live or closed; every variant a client compiled appears, at 0 if never
    served. Approximate under heavy multi-threaded use, like ``evaluation_counts``."""
    with _retired_lock:
        total = {k: dict(v) for k, v in _retired_variants.items()}
        live = list(_live_counts)
    for counts in live:
        for key, served in list(counts.variants.items()):
            slot = total.setdefault(key, {})
            for name, (n,) in list(served.items()):
                slot[name] = slot.get(name, 0) + n
    return total
