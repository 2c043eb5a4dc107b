"""flags.cache.canonical: values compared without any serializer, forgetting only the shape
differences a sound serializer introduces."""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from enum import Enum, StrEnum
from typing import Any

import pytest

from flags.cache.canonical import canonical, same


@dataclasses.dataclass(frozen=True)
class Record:
    key_id: str
    scopes: tuple[str, ...]


Pair = namedtuple("Pair", "a b")


class Color(StrEnum):
    RED = "red"


class Level(Enum):
    HIGH = 3


class Unequal:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparison")

    __hash__ = object.__hash__


class TestSame:
    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ({"scopes": ("read", "write")}, {"scopes": ["read", "write"]}),
            (Record("k", ("read",)), {"key_id": "k", "scopes": ["read"]}),
            (Pair(1, 2), [1, 2]),
            ({1: "x"}, {"1": "x"}),
            (frozenset({"b", "a"}), ["a", "b"]),
            (Color.RED, "red"),
            (Level.HIGH, 3),
            ([(1, 2), {"x": (3,)}], [[1, 2], {"x": [3]}]),
        ],
    )
    def test_same__shape_changed_by_a_sound_serializer__equal(self, a: Any, b: Any) -> None:
        """Tuples and lists, records and dicts, int and string keys agree."""
        assert same(a, b) and same(b, a)

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ({"scopes": ["read", "write"]}, {"scopes": []}),
            (Record("k", ("read",)), Record("k", ())),
            ({"tenant": "acme"}, {"tenant": "globex"}),
            ([1, 2], [2, 1]),
            ({"a": 1}, {"a": 1, "b": 2}),
            ("1", 1),
        ],
    )
    def test_same__different_values__not_equal(self, a: Any, b: Any) -> None:
        """The seed incident's damage (scopes emptied) and any other change disagree."""
        assert not same(a, b) and not same(b, a)

    def test_same__value_whose_eq_raises__not_equal_and_never_raises(self) -> None:
        assert same(Unequal(), {"x": 1}) is False


class TestCanonical:
    def test_canonical__deep_nesting__stops_without_recursion_error(self) -> None:
        """A pathological nesting is compared as it is past the depth bound."""
        value: Any = []
        for _ in range(5000):
            value = [value]
        canonical(value)

    def test_canonical__unorderable_set__stable_order(self) -> None:
        assert canonical({1, "a"}) == canonical({"a", 1})
