"""The grown precedence table, row by row, for every flag type; evaluate, value and variant agree.

Rows (flags.evaluate): killed -> off_variant (killed); missing -> default; disabled,
tenants_off, outside the rollout -> off_variant; then for a caller who is on: the
tenant's pinned variant (pinned), the split's variant (split), else on_variant.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flags.bucketing import in_rollout
from flags.client import FlagClient
from flags.evaluate import evaluate
from flags.model import FlagState, FlagType, Reason, Snapshot, Variant

from .strategies import TENANTS, typed_states

# Per type: the off (safe) value, the on value, a pinned and a split-only value, a default.
VALUES: dict[FlagType, tuple[Any, Any, Any, Any, Any]] = {
    FlagType.STRING: ("safe", "gold", "silver", "bronze", "dflt"),
    FlagType.NUMBER: (30, 300, 60.5, -1, 0),
    FlagType.JSON: ({"mode": "safe"}, {"mode": "on"}, [1, 2], None, {"mode": "default"}),
}
TYPES = list(VALUES)
HALF_IN = next(t for t in (f"t-{i}" for i in range(1000)) if in_rollout("f", t, 50))
HALF_OUT = next(t for t in (f"t-{i}" for i in range(1000)) if not in_rollout("f", t, 50))


def typed(flag_type: FlagType, **extra: Any) -> FlagState:
    off, on, pinned, third, _ = VALUES[flag_type]
    fields: dict[str, Any] = {
        "enabled": True,
        "rollout": 100,
        "version": 7,
        "type": flag_type,
        "variants": (
            Variant("off", off),
            Variant("on", on),
            Variant("pinned", pinned),
            Variant("third", third),
        ),
        "off_variant": "off",
        "on_variant": "on",
    }
    fields.update(extra)
    return FlagState(**fields).check_variants()


def served(state: FlagState | None, tenant: str | None) -> tuple[str | None, Any, Reason]:
    """(variant, value, reason) three ways, asserting they agree."""
    ev = evaluate("f", state, tenant)
    client = FlagClient.from_snapshot(
        Snapshot("production", 1, {} if state is None else {"f": state})
    )
    name, value, reason = client.variant("f", tenant)
    assert (name, reason) == (ev.variant, ev.reason) or state is None
    default = VALUES[state.type][4] if state is not None else "dflt"
    got = client.value("f", default, tenant)
    assert got == (default if name is None else value)
    assert client.is_enabled("f", tenant) is ev.enabled
    return name, value, reason


@pytest.mark.parametrize("flag_type", TYPES)
class TestRows:
    def test_row1__killed__serves_off_variant(self, flag_type: FlagType) -> None:
        """A kill serves the declared safe value, with reason killed, whatever else is set."""
        state = typed(
            flag_type,
            killed=True,
            tenant_variants=(("acme", "pinned"),),
            split=(("third", 1000),),
            tenants_on=frozenset({"acme"}),
        )
        for tenant in ("acme", HALF_IN, None):
            assert served(state, tenant) == ("off", VALUES[flag_type][0], Reason.KILLED)

    def test_row2__missing__default(self, flag_type: FlagType) -> None:
        client = FlagClient.from_snapshot(Snapshot("production", 1, {}))
        default = VALUES[flag_type][4]
        assert client.value("f", default, "acme") == default
        assert client.variant("f", "acme") == (None, None, Reason.MISSING)

    def test_row3__disabled__off_variant(self, flag_type: FlagType) -> None:
        state = typed(flag_type, enabled=False, tenant_variants=(("acme", "pinned"),))
        assert served(state, "acme") == ("off", VALUES[flag_type][0], Reason.DISABLED)

    def test_row4__tenant_off__off_variant(self, flag_type: FlagType) -> None:
        """tenants_off wins over a pin."""
        state = typed(
            flag_type, tenants_off=frozenset({"acme"}), tenant_variants=(("acme", "pinned"),)
        )
        assert served(state, "acme") == ("off", VALUES[flag_type][0], Reason.TENANT_OFF)

    def test_row5__tenant_on__on_variant(self, flag_type: FlagType) -> None:
        state = typed(flag_type, rollout=0, tenants_on=frozenset({"acme"}))
        assert served(state, "acme") == ("on", VALUES[flag_type][1], Reason.TENANT_ON)

    def test_row6__inside_rollout__on_variant(self, flag_type: FlagType) -> None:
        state = typed(flag_type, rollout=50)
        assert served(state, HALF_IN) == ("on", VALUES[flag_type][1], Reason.ROLLOUT)

    def test_row7__outside_rollout__off_variant(self, flag_type: FlagType) -> None:
        """Outside the rollout, neither a pin nor the split applies."""
        state = typed(
            flag_type,
            rollout=50,
            tenant_variants=((HALF_OUT, "pinned"),),
            split=(("third", 1000),),
        )
        assert served(state, HALF_OUT) == ("off", VALUES[flag_type][0], Reason.ROLLOUT)

    def test_row8__pinned__pinned_variant(self, flag_type: FlagType) -> None:
        """A pin wins over the split."""
        state = typed(flag_type, tenant_variants=(("acme", "pinned"),), split=(("third", 1000),))
        assert served(state, "acme") == ("pinned", VALUES[flag_type][2], Reason.PINNED)

    def test_row8__pinned_tenant_on__pinned_variant(self, flag_type: FlagType) -> None:
        """A tenant in tenants_on is on; its pin then picks the variant."""
        state = typed(
            flag_type,
            rollout=0,
            tenants_on=frozenset({"acme"}),
            tenant_variants=(("acme", "pinned"),),
        )
        assert served(state, "acme") == ("pinned", VALUES[flag_type][2], Reason.PINNED)

    def test_row9__split__split_variant(self, flag_type: FlagType) -> None:
        state = typed(flag_type, split=(("third", 1000),))
        assert served(state, "acme") == ("third", VALUES[flag_type][3], Reason.SPLIT)

    def test_row9__split_without_tenant__on_variant(self, flag_type: FlagType) -> None:
        """Without a tenant nothing is sticky: the split does not apply."""
        state = typed(flag_type, split=(("third", 1000),))
        assert served(state, None) == ("on", VALUES[flag_type][1], Reason.ROLLOUT)

    def test_row10__on__on_variant(self, flag_type: FlagType) -> None:
        assert served(typed(flag_type), "acme") == ("on", VALUES[flag_type][1], Reason.ROLLOUT)

    def test_no_tenant__partial_rollout__off_variant(self, flag_type: FlagType) -> None:
        state = typed(flag_type, rollout=50)
        assert served(state, None) == ("off", VALUES[flag_type][0], Reason.ROLLOUT)

    def test_invalid_tenant__default_and_error(self, flag_type: FlagType) -> None:
        """An invalid tenant gets the default and no variant (reason error)."""
        state = typed(flag_type)
        client = FlagClient.from_snapshot(Snapshot("production", 1, {"f": state}))
        default = VALUES[flag_type][4]
        for bad in ("x" * 201, "a\nb", 5):  # "" is no tenant (test_unleash_tenants.py)
            assert client.value("f", default, bad) == default  # type: ignore[arg-type]
            assert client.variant("f", bad) == (None, None, Reason.ERROR)  # type: ignore[arg-type]


class TestBoolean:
    """A boolean flag keeps its rows; its variants are on/off."""

    @pytest.mark.parametrize(
        ("state", "tenant", "expected"),
        [
            (FlagState(enabled=True, rollout=100, killed=True), "a", ("off", False, Reason.KILLED)),
            (FlagState(enabled=False, rollout=100), "a", ("off", False, Reason.DISABLED)),
            (
                FlagState(enabled=True, rollout=100, tenants_off=frozenset({"a"})),
                "a",
                ("off", False, Reason.TENANT_OFF),
            ),
            (
                FlagState(enabled=True, tenants_on=frozenset({"a"})),
                "a",
                ("on", True, Reason.TENANT_ON),
            ),
            (FlagState(enabled=True, rollout=50), HALF_IN, ("on", True, Reason.ROLLOUT)),
            (FlagState(enabled=True, rollout=50), HALF_OUT, ("off", False, Reason.ROLLOUT)),
        ],
        ids=["killed", "disabled", "tenant_off", "tenant_on", "rollout_in", "rollout_out"],
    )
    def test_boolean__rows__on_off_variants(
        self, state: FlagState, tenant: str, expected: tuple[str, bool, Reason]
    ) -> None:
        client = FlagClient.from_snapshot(Snapshot("production", 1, {"f": state}))
        assert client.variant("f", tenant) == expected
        assert client.value("f", not expected[1], tenant) is expected[1]
        assert evaluate("f", state, tenant).variant is None  # boolean evaluations unchanged

    def test_boolean__missing__default(self) -> None:
        client = FlagClient.from_snapshot(Snapshot("production", 1, {}))
        assert client.value("f", True, "a") is True
        assert client.variant("f", "a") == (None, None, Reason.MISSING)


class TestTypeMismatch:
    @pytest.mark.parametrize(
        ("flag_type", "default"),
        [
            (FlagType.STRING, 5),
            (FlagType.NUMBER, "5"),
            (FlagType.NUMBER, True),
            (FlagType.JSON, "x"),
            (FlagType.STRING, False),
        ],
    )
    def test_value__default_of_another_type__default(
        self, flag_type: FlagType, default: object
    ) -> None:
        """value() answers the default when the flag is of another type than the default."""
        client = FlagClient.from_snapshot(Snapshot("production", 1, {"f": typed(flag_type)}))
        assert client.value("f", default, "acme") == default

    def test_value__boolean_flag_string_default__default(self) -> None:
        client = FlagClient.from_snapshot(
            Snapshot("p", 1, {"f": FlagState(enabled=True, rollout=100)})
        )
        assert client.value("f", "x", "a") == "x"

    def test_value__none_default__any_type(self) -> None:
        """A None default accepts a flag of any type."""
        client = FlagClient.from_snapshot(Snapshot("p", 1, {"f": typed(FlagType.NUMBER)}))
        assert client.value("f", None, "acme") == 300

    def test_value__unhashable_key__default_never_raises(self) -> None:
        client = FlagClient.from_snapshot(Snapshot("p", 1, {"f": typed(FlagType.NUMBER)}))
        assert client.value(["f"], 1, "acme") == 1  # type: ignore[arg-type]
        assert client.variant(["f"], "acme") == (None, None, Reason.ERROR)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(state=typed_states(), tenant=st.one_of(st.none(), TENANTS))
def test_value_variant_evaluate__any_state__agree(state: FlagState, tenant: str | None) -> None:
    """value(), variant() and the pure evaluate() are one rule, for any typed state."""
    ev = evaluate("f", state, tenant)
    client = FlagClient.from_snapshot(Snapshot("production", 1, {"f": state}))
    assert client.variant("f", tenant) == (ev.variant, ev.value, ev.reason)
    assert client.value("f", None, tenant) == ev.value
    assert client.is_enabled("f", tenant) is ev.enabled
    # The off answers serve the safe value; the on answers a declared variant.
    if not ev.enabled:
        assert ev.variant == state.off_variant
    if state.killed:
        assert ev.reason is Reason.KILLED
