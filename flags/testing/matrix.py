"""Pure: the on/off combinations a ``flag_matrix`` test runs with, and their ids.

``all_combinations`` is every combination, ``2 ** n`` runs. ``pairwise_combinations``
is a binary covering array of strength 2: for every two flags, each of the four
pairs of values (on/on, on/off, off/on, off/off) appears in at least one run.
It has the fewest runs any such array can have (Kleitman and Spencer, 1973):
the smallest ``N`` with ``comb(N - 1, ceil(N / 2)) >= n``.

==========  ===  ===  ===  ===  ===  ===  ===  ===  ====  ====  ====
flags (n)     1    2    3    4    5    6    7    8     9    10    15
all          2    4    8   16   32   64  128  256   512  1024 32768
pairwise     2    4    4    5    6    6    6    6     6     6     7
==========  ===  ===  ===  ===  ===  ===  ===  ===  ====  ====  ====

A typed flag (string, number, json) ranges over its variants instead of on/off:
``product_combinations`` gives every combination of every flag's values (the
product of their counts); pairwise covering applies to on/off flags only.

Every result is deterministic: the same keys give the same runs in the same order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from flags.model import validate_flag_key

__all__ = [
    "all_combinations",
    "format_run_id",
    "pairwise_combinations",
    "pairwise_run_count",
    "product_combinations",
    "validate_matrix_keys",
]


def validate_matrix_keys(keys: Sequence[object]) -> list[str]:
    """Return ``keys`` as a list if it is a non-empty list of distinct flag keys.

    Raises ``flags.errors.ValidationError`` naming the first bad key, or ``ValueError``
    for an empty or duplicated list.
    """
    if not keys:
        raise ValueError("a flag matrix needs at least one flag key")
    valid: list[str] = []
    for key in keys:
        valid.append(validate_flag_key(key, "flag_matrix key"))
        if valid.count(valid[-1]) > 1:
            raise ValueError(f"flag key {key!r} appears twice in the flag matrix")
    return valid


def all_combinations(keys: Sequence[str]) -> list[dict[str, bool]]:
    """Every on/off combination of ``keys``: ``2 ** len(keys)`` runs, all-off first."""
    return [dict(zip(keys, values, strict=True)) for values in _product(len(keys))]


def _product(n: int) -> list[tuple[bool, ...]]:
    return list(itertools.product((False, True), repeat=n))


def pairwise_run_count(n: int) -> int:
    """The number of runs ``pairwise_combinations`` gives for ``n`` flags (the minimum).

    Raises ``ValueError`` for ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"a flag matrix needs at least one flag, got {n}")
    if n == 1:
        return 2
    rows = 4
    while math.comb(rows - 1, (rows + 1) // 2) < n:
        rows += 1
    return rows


def pairwise_combinations(keys: Sequence[str]) -> list[dict[str, bool]]:
    """Runs covering every pair of values of every two of ``keys``; the first is all-on.

    Construction: with ``N = pairwise_run_count(n)`` runs, each flag is off in a
    distinct set of ``ceil(N / 2)`` of the runs ``1..N-1`` and on elsewhere. Two
    such sets always intersect (their sizes sum to more than ``N - 1``), neither
    contains the other (same size, distinct), and neither contains run 0, so the
    two flags are seen off/off, on/off, off/on and on/on.
    """
    n = len(keys)
    rows = pairwise_run_count(n)
    if n == 1:
        return [{keys[0]: True}, {keys[0]: False}]
    off_sets = itertools.islice(itertools.combinations(range(1, rows), (rows + 1) // 2), n)
    columns = [frozenset(off) for off in off_sets]
    return [
        {key: row not in off for key, off in zip(keys, columns, strict=True)} for row in range(rows)
    ]


def product_combinations(axes: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    """Every combination of each ``(key, values)`` axis, in order (the first value of
    every axis first). ``values`` are ``(False, True)`` for an on/off flag and the
    variant names of a typed one. Raises ``ValueError`` for an axis without values."""
    for key, values in axes:
        if not values:
            raise ValueError(f"flag {key!r} has no values to range over")
    keys = [key for key, _ in axes]
    return [
        dict(zip(keys, combo, strict=True))
        for combo in itertools.product(*(values for _, values in axes))
    ]


def format_run_id(values: Mapping[str, Any]) -> str:
    """The test id of one run: ``auth.cache.l1=on,prices.tier=gold`` (keys in order)."""
    return ",".join(
        f"{key}={('on' if value else 'off') if type(value) is bool else value}"
        for key, value in values.items()
    )
