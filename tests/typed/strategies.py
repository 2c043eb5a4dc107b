"""Hypothesis strategies for typed flag states (shared by the typed-flag tests)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import strategies as st

from flags.model import FlagState, FlagType, Variant

TENANTS = st.sampled_from([f"t{i}" for i in range(40)] + ["acme", "globex", "ünï", "x" * 200])

VALUES = {
    FlagType.STRING: st.text(max_size=20),
    FlagType.NUMBER: st.one_of(
        st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False)
    ),
    FlagType.JSON: st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=6,
    ),
}


@st.composite
def weights(draw: st.DrawFn, n: int) -> list[int]:
    """``n`` non-negative integers summing to 1000."""
    cuts = sorted(draw(st.lists(st.integers(0, 1000), min_size=n - 1, max_size=n - 1)))
    bounds = [0, *cuts, 1000]
    return [b - a for a, b in pairwise(bounds)]


@st.composite
def typed_states(draw: st.DrawFn) -> FlagState:
    """A valid string, number or json flag state, with any mix of the rule's fields."""
    flag_type = draw(st.sampled_from([FlagType.STRING, FlagType.NUMBER, FlagType.JSON]))
    n = draw(st.integers(1, 4))
    variants = tuple(Variant(f"v{i}", draw(VALUES[flag_type])) for i in range(n))
    names = [v.name for v in variants]
    split: tuple[tuple[str, int], ...] = ()
    if draw(st.booleans()):
        split = tuple(zip(names, draw(weights(n)), strict=True))
    pins = draw(st.dictionaries(TENANTS, st.sampled_from(names), max_size=4))
    on = draw(st.sets(TENANTS, max_size=4))
    off = draw(st.sets(TENANTS, max_size=4)) - on
    return FlagState(
        enabled=draw(st.booleans()),
        rollout=draw(st.sampled_from([0, 1, 30, 50, 99, 100])),
        tenants_on=frozenset(on),
        tenants_off=frozenset(off),
        killed=draw(st.booleans()),
        version=draw(st.integers(0, 5)),
        type=flag_type,
        variants=variants,
        off_variant=draw(st.sampled_from(names)),
        on_variant=draw(st.sampled_from(names)),
        split=split,
        tenant_variants=tuple(sorted(pins.items())),
    ).check_variants()
