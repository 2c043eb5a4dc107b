"""The shape-free form of a cached value, for judging a layer against the truth.

A verification or shadow comparison asks one question: does the value a layer
holds equal the loader's value? It must not answer it through the layer's own
serializer or codec (``loads(dumps(truth))``): a broken write path applied to
the truth as well makes the two agree, which is how the seed incident's
serializer (records written with their ``scopes`` emptied) went unseen.

``same(a, b)`` compares the two values directly and, only when they differ,
through ``canonical``: a pure mapping that forgets the shape differences a
well-behaved serializer may introduce, and nothing else:

* tuples, lists and other sequences (not strings or bytes) -> lists;
* mappings -> dicts, with integer keys as strings (JSON's object keys);
* dataclass instances -> dicts of their fields (a serializer may load a record
  back as a plain object, or as the record);
* named tuples -> lists (JSON writes them as arrays);
* sets and frozensets -> lists in a stable order;
* enum members -> their values;
* everything else as it is (numbers, strings, bytes, None, bools...).

It never calls into the cache's serializer, codec or layers, performs no I/O,
and is deterministic; it raises nothing for any value (an unhashable or
unorderable set member falls back to insertion order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Set
from enum import Enum
from typing import Any

__all__ = ["canonical", "same"]

_SCALARS = (str, bytes, bytearray, int, float, bool, type(None))
_MAX_DEPTH = 64


def canonical(value: Any, _depth: int = 0) -> Any:
    """``value`` with serializer-legitimate shape differences removed (see the module)."""
    if isinstance(value, _SCALARS):
        if isinstance(value, Enum):
            return canonical(value.value, _depth + 1)
        return value
    if _depth > _MAX_DEPTH:  # a cycle or an absurd nesting: compare as it is
        return value
    depth = _depth + 1
    if isinstance(value, Enum):
        return canonical(value.value, depth)
    if isinstance(value, Mapping):
        return {_key(k): canonical(v, depth) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v, depth) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: canonical(getattr(value, f.name), depth) for f in dataclasses.fields(value)}
    if isinstance(value, Set):
        items = [canonical(v, depth) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=repr)
    return value


def _key(key: Any) -> Any:
    if isinstance(key, bool) or not isinstance(key, int):
        return key.value if isinstance(key, Enum) else key
    return str(key)


def same(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same value up to ``canonical``. Never raises
    (a value whose ``==`` raises is not shown equal)."""
    try:
        if a == b:
            return True
        return bool(canonical(a) == canonical(b))
    except Exception:  # a user value's __eq__ failed: it cannot be shown equal
        return False
