"""flags.model for typed flags: types, variants, value limits, split and pins, JSON form."""

from __future__ import annotations

import math

import pytest

from flags.errors import ValidationError
from flags.model import (
    BOOLEAN_VARIANTS,
    MAX_JSON_VALUE,
    MAX_STRING_VALUE,
    FlagState,
    FlagType,
    Snapshot,
    StateChange,
    Variant,
    validate_split,
    validate_value,
    validate_variants,
)

TIERS = (Variant("gold", "G"), Variant("silver", "S"), Variant("safe", "X"))


def tier_state(**extra: object) -> FlagState:
    fields: dict[str, object] = {
        "enabled": True,
        "rollout": 100,
        "type": FlagType.STRING,
        "variants": TIERS,
        "off_variant": "safe",
        "on_variant": "gold",
    }
    fields.update(extra)
    return FlagState(**fields).check_variants()  # type: ignore[arg-type]


def field_of(call: object) -> str | None:
    with pytest.raises(ValidationError) as info:
        call()  # type: ignore[operator]
    return info.value.field


class TestValidateValue:
    def test_validate_value__string_at_limit__accepted(self) -> None:
        """8 KB of UTF-8 is the most a string value may hold."""
        assert validate_value(FlagType.STRING, "é" * (MAX_STRING_VALUE // 2)) == "é" * 4096

    def test_validate_value__string_over_limit__names_field(self) -> None:
        """One byte over 8 KB is refused, naming the field."""
        assert field_of(
            lambda: validate_value(FlagType.STRING, "x" * 8193, "variants.0.value")
        ) == ("variants.0.value")

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, True, "1", None])
    def test_validate_value__number_not_finite__refused(self, bad: object) -> None:
        """Numbers are finite ints or floats; bools and strings are not numbers."""
        assert field_of(lambda: validate_value(FlagType.NUMBER, bad)) == "value"

    def test_validate_value__json_over_limit__refused(self) -> None:
        """A JSON value over 32 KB serialised is refused."""
        big = {"k": "x" * MAX_JSON_VALUE}
        assert field_of(lambda: validate_value(FlagType.JSON, big)) == "value"

    @pytest.mark.parametrize("bad", [{"k": math.nan}, {1: 2}, {"k": object()}, {"k": {1, 2}}])
    def test_validate_value__json_not_json__refused(self, bad: object) -> None:
        """NaN, non-string keys and non-JSON objects are not JSON values."""
        assert field_of(lambda: validate_value(FlagType.JSON, bad)) == "value"

    def test_validate_value__json_any_json__accepted(self) -> None:
        """Objects, arrays and scalars are all JSON values."""
        for good in ({"a": [1, 2.5, None, True]}, [1], "s", 3, None):
            assert validate_value(FlagType.JSON, good) == good

    def test_validate_value__boolean_only_bools(self) -> None:
        """A boolean flag serves True or False, nothing else."""
        assert field_of(lambda: validate_value(FlagType.BOOLEAN, 1)) == "value"


class TestValidateVariants:
    def test_validate_variants__bad_second_value__names_index(self) -> None:
        """The error names the variant's index and field: variants.1.value."""
        raw = [{"name": "short", "value": 30}, {"name": "long", "value": "300"}]
        assert field_of(lambda: validate_variants(FlagType.NUMBER, raw)) == "variants.1.value"

    def test_validate_variants__duplicate_name__refused(self) -> None:
        raw = [{"name": "a", "value": 1}, {"name": "a", "value": 2}]
        assert field_of(lambda: validate_variants(FlagType.NUMBER, raw)) == "variants.1.name"

    def test_validate_variants__bad_name__refused(self) -> None:
        raw = [{"name": "has space", "value": 1}]
        assert field_of(lambda: validate_variants(FlagType.NUMBER, raw)) == "variants.0.name"

    def test_validate_variants__typed_empty__refused(self) -> None:
        """A string, number or json flag declares at least one variant."""
        assert field_of(lambda: validate_variants(FlagType.JSON, [])) == "variants"

    def test_validate_variants__boolean__always_on_off(self) -> None:
        """A boolean flag's variants are on/off, whether given or not; others are refused."""
        assert validate_variants(FlagType.BOOLEAN, []) == BOOLEAN_VARIANTS
        given = [{"name": "off", "value": False}, {"name": "on", "value": True}]
        assert validate_variants(FlagType.BOOLEAN, given) == BOOLEAN_VARIANTS
        bad = [{"name": "on", "value": False}, {"name": "off", "value": True}]
        assert field_of(lambda: validate_variants(FlagType.BOOLEAN, bad)) == "variants"


class TestValidateSplit:
    def test_validate_split__sum_not_1000__refused(self) -> None:
        assert field_of(
            lambda: validate_split({"gold": 200, "silver": 700}, ["gold", "silver"])
        ) == ("split")

    def test_validate_split__unknown_variant__names_entry(self) -> None:
        raw = [{"variant": "gold", "weight": 500}, {"variant": "tin", "weight": 500}]
        assert field_of(lambda: validate_split(raw, ["gold"])) == "split.1.variant"

    def test_validate_split__bad_weight__names_entry(self) -> None:
        raw = [{"variant": "gold", "weight": 1000.0}]
        assert field_of(lambda: validate_split(raw, ["gold"])) == "split.0.weight"

    def test_validate_split__order_kept(self) -> None:
        """The order is the order variants take buckets in (Unleash's)."""
        assert validate_split({"silver": 800, "gold": 200}, ["gold", "silver"]) == (
            ("silver", 800),
            ("gold", 200),
        )


class TestCheckVariants:
    def test_check_variants__typed_without_off_variant__refused(self) -> None:
        """A typed flag must declare its safe value: no default the app forgot."""
        assert field_of(lambda: tier_state(off_variant=None)) == "off_variant"

    def test_check_variants__undeclared_on_variant__refused(self) -> None:
        assert field_of(lambda: tier_state(on_variant="tin")) == "on_variant"

    def test_check_variants__boolean_with_split__refused(self) -> None:
        """A boolean flag serves on/off from its rules only."""
        assert field_of(lambda: FlagState(split=(("on", 1000),)).check_variants()) == "split"

    def test_check_variants__boolean_pins__refused(self) -> None:
        state = FlagState(tenant_variants=(("acme", "on"),))
        assert field_of(state.check_variants) == "tenant_variants"


class TestJsonForm:
    def test_to_dict__boolean__as_earlier_releases(self) -> None:
        """A boolean flag's JSON form has no variant fields (older readers see no change)."""
        assert set(FlagState(enabled=True).to_dict()) == {
            "enabled",
            "rollout",
            "tenants_on",
            "tenants_off",
            "killed",
            "kill_reason",
            "killed_at",
            "killed_by",
            "version",
        }

    def test_round_trip__typed(self) -> None:
        """to_dict / from_dict round-trip every typed field."""
        state = tier_state(
            split=(("silver", 300), ("gold", 700)), tenant_variants=(("acme", "silver"),)
        )
        data = state.to_dict()
        assert data["split"] == [
            {"variant": "silver", "weight": 300},
            {"variant": "gold", "weight": 700},
        ]
        assert data["tenant_variants"] == {"acme": "silver"}
        assert FlagState.from_dict(data) == state

    def test_from_dict__bad_variant_value__names_field(self) -> None:
        data = tier_state().to_dict()
        data["variants"][1]["value"] = 5
        assert field_of(lambda: FlagState.from_dict(data)) == "variants.1.value"

    def test_from_dict__typed_missing_off_variant__refused(self) -> None:
        data = tier_state().to_dict()
        del data["off_variant"]
        assert field_of(lambda: FlagState.from_dict(data)) == "off_variant"

    def test_from_dict__unknown_type__refused(self) -> None:
        assert field_of(lambda: FlagState.from_dict({"type": "date"})) == "type"

    def test_snapshot__without_new_fields__reads_as_today(self) -> None:
        """A snapshot of an earlier release parses to boolean flags, unchanged."""
        snap = Snapshot.from_dict(
            {
                "environment": "production",
                "version": 3,
                "flags": {"a": {"enabled": True, "rollout": 40}},
            }
        )
        assert snap.flags["a"] == FlagState(enabled=True, rollout=40)
        assert snap.flags["a"].type is FlagType.BOOLEAN


class TestStateChange:
    def test_apply__keeps_typed_fields(self) -> None:
        """A change of the rollout keeps the variants and the split."""
        state = tier_state(split=(("gold", 500), ("silver", 500)))
        after = StateChange(rollout=20).apply(state)
        assert (after.rollout, after.split, after.variants) == (20, state.split, state.variants)

    def test_apply__sets_split_and_variants(self) -> None:
        after = StateChange(on_variant="silver", split=(("gold", 200), ("silver", 800))).apply(
            tier_state()
        )
        assert (after.on_variant, after.split) == ("silver", (("gold", 200), ("silver", 800)))

    def test_apply__bad_split__refused(self) -> None:
        change = StateChange(split=(("gold", 200),))
        assert field_of(lambda: change.apply(tier_state())) == "split"

    def test_is_empty__variant_fields_count(self) -> None:
        assert not StateChange(off_variant="safe").is_empty()
