"""risk(before, after): every field in every direction, mixed changes, and properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flags.model import FlagState, FlagType, StateChange, Variant
from flags.risk import Risk, creation_risk, movements, risk

BASE = FlagState(
    enabled=True, rollout=50, tenants_on=frozenset({"a"}), tenants_off=frozenset({"z"})
)
TYPED = FlagState(
    enabled=True,
    rollout=100,
    type=FlagType.STRING,
    variants=(Variant("blue", "#00f"), Variant("red", "#f00"), Variant("off", "")),
    off_variant="off",
    on_variant="blue",
    split=(("blue", 500), ("red", 500)),
    tenant_variants=(("t1", "red"),),
)

CASES = [
    ("enable", replace(BASE, enabled=False), BASE, Risk.RAISES),
    ("disable", BASE, replace(BASE, enabled=False), Risk.LOWERS),
    ("rollout up", BASE, replace(BASE, rollout=60), Risk.RAISES),
    ("rollout down", BASE, replace(BASE, rollout=40), Risk.LOWERS),
    ("tenants_on add", BASE, replace(BASE, tenants_on=frozenset({"a", "b"})), Risk.RAISES),
    ("tenants_on remove", BASE, replace(BASE, tenants_on=frozenset()), Risk.LOWERS),
    ("tenants_off add", BASE, replace(BASE, tenants_off=frozenset({"z", "y"})), Risk.LOWERS),
    ("tenants_off remove", BASE, replace(BASE, tenants_off=frozenset()), Risk.RAISES),
    ("kill", BASE, replace(BASE, killed=True, kill_reason="r"), Risk.LOWERS),
    ("unkill", replace(BASE, killed=True), BASE, Risk.RAISES),
    ("on_variant", TYPED, replace(TYPED, on_variant="red"), Risk.RAISES),
    ("off_variant", TYPED, replace(TYPED, off_variant="blue"), Risk.RAISES),
    ("split", TYPED, replace(TYPED, split=(("blue", 400), ("red", 600))), Risk.RAISES),
    ("split removed", TYPED, replace(TYPED, split=()), Risk.RAISES),
    (
        "pin added",
        TYPED,
        replace(TYPED, tenant_variants=(("t1", "red"), ("t2", "blue"))),
        Risk.RAISES,
    ),
    ("pin removed", TYPED, replace(TYPED, tenant_variants=()), Risk.RAISES),
    ("pin moved", TYPED, replace(TYPED, tenant_variants=(("t1", "blue"),)), Risk.RAISES),
    (
        "variant value",
        TYPED,
        replace(TYPED, variants=(Variant("blue", "#00e"), *TYPED.variants[1:])),
        Risk.RAISES,
    ),
    ("nothing", BASE, BASE, Risk.NEUTRAL),
    ("version only", BASE, replace(BASE, version=7), Risk.NEUTRAL),
    (
        "kill bookkeeping",
        replace(BASE, killed=True),
        replace(BASE, killed=True, kill_reason="x", killed_by="o"),
        Risk.NEUTRAL,
    ),
    (
        "enable while killed",
        replace(BASE, killed=True, enabled=False),
        replace(BASE, killed=True),
        Risk.RAISES,
    ),
]


@pytest.mark.parametrize(
    ("before", "after", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_risk__each_field_and_direction__as_the_table_says(
    before: FlagState, after: FlagState, expected: Risk
) -> None:
    """Each row of the direction table, and the neutral moves."""
    assert risk(before, after) is expected


def test_risk__raising_and_lowering_at_once__raises_as_a_whole() -> None:
    """A mixed change (rollout down, a tenant let back in) is gated as a whole."""
    after = replace(BASE, rollout=10, tenants_off=frozenset())
    assert risk(BASE, after) is Risk.RAISES
    assert {m.direction for m in movements(BASE, after)} == {Risk.RAISES, Risk.LOWERS}


def test_movements__tenant_moves__list_only_the_moved_tenants() -> None:
    """The diff names the tenants that moved, not the whole sets."""
    after = replace(BASE, tenants_on=frozenset({"b"}))
    assert [m.to_dict() for m in movements(BASE, after)] == [
        {"field": "tenants_on+", "direction": "raises", "before": None, "after": ["b"]},
        {"field": "tenants_on-", "direction": "lowers", "before": ["a"], "after": None},
    ]


def test_risk__state_change_tenant_edits__follow_the_table() -> None:
    """Adding a tenant to tenants_off through StateChange (which removes it from
    tenants_on) lowers; adding it to tenants_on (removing it from tenants_off) raises."""
    assert risk(BASE, StateChange(tenants_off_add=frozenset({"a"})).apply(BASE)) is Risk.LOWERS
    assert risk(BASE, StateChange(tenants_on_add=frozenset({"z"})).apply(BASE)) is Risk.RAISES


def test_creation_risk__plans_and_schedules__raise() -> None:
    """A new plan or schedule needs the approvals."""
    assert creation_risk() is Risk.RAISES


tenants = st.frozensets(st.sampled_from(["a", "b", "c", "d"]))
states = st.builds(
    FlagState,
    enabled=st.booleans(),
    rollout=st.integers(0, 100),
    tenants_on=tenants,
    tenants_off=tenants,
    killed=st.booleans(),
    version=st.integers(0, 10),
)


@given(states, states)
def test_risk__any_pair__reversing_swaps_raises_and_lowers_for_boolean_fields(
    before: FlagState, after: FlagState
) -> None:
    """Every move has a mirror: the reverse change moves the same fields the other way."""
    forward = {(m.field.rstrip("+-"), m.direction) for m in movements(before, after)}
    backward = {(m.field.rstrip("+-"), m.direction) for m in movements(after, before)}
    flip = {Risk.RAISES: Risk.LOWERS, Risk.LOWERS: Risk.RAISES}
    assert backward == {(f, flip[d]) for f, d in forward}


@given(states, states)
def test_risk__any_pair__neutral_exactly_when_nothing_served_moved(
    before: FlagState, after: FlagState
) -> None:
    """Neutral iff the two states agree on every field callers can be served."""
    same = (
        before.enabled == after.enabled
        and before.rollout == after.rollout
        and before.tenants_on == after.tenants_on
        and before.tenants_off == after.tenants_off
        and before.killed == after.killed
    )
    assert (risk(before, after) is Risk.NEUTRAL) == same


@given(states, st.integers(0, 100), st.integers(0, 100))
def test_risk__rollout_only__direction_follows_the_sign(state: FlagState, a: int, b: int) -> None:
    """A rollout-only change raises exactly when it goes up."""
    before, after = replace(state, rollout=a), replace(state, rollout=b)
    expected = Risk.NEUTRAL if a == b else Risk.RAISES if b > a else Risk.LOWERS
    assert risk(before, after) is expected


@given(states, states)
def test_risk__raising_change__has_a_raising_movement(before: FlagState, after: FlagState) -> None:
    """risk() raises iff some movement raises (gated as a whole)."""
    moved = movements(before, after)
    assert (risk(before, after) is Risk.RAISES) == any(m.direction is Risk.RAISES for m in moved)
