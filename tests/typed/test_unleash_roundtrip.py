"""Typed flags read back from Unleash: flagrail -> Unleash payload -> flagrail, for every
typed shape. The read-back state serves every tenant what the original serves, and keeps
every field an Unleash feature can carry (``flags.unleash.mapping.state_from_feature``)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from flags.client import FlagClient
from flags.model import FlagState, FlagType, Snapshot, Variant
from flags.unleash.mapping import feature_from_state, features_payload, state_from_feature
from flags.unleash.source import parse_features

TIERS = (Variant("gold", "G"), Variant("silver", "S"), Variant("bronze", "B"), Variant("safe", "X"))
ODD = ("a\\", " padded ", "tab-end\u00a0")  # listed through REGEX constraints
TENANTS = [f"tenant-{i:04d}" for i in range(1500)] + [*ODD, "ünï-t", "x" * 200, ""]


def tier(**extra: Any) -> FlagState:
    fields: dict[str, Any] = {
        "enabled": True,
        "rollout": 100,
        "type": FlagType.STRING,
        "variants": TIERS,
        "off_variant": "safe",
        "on_variant": "gold",
    }
    fields.update(extra)
    return FlagState(**fields).check_variants()


SHAPES: dict[str, FlagState] = {
    "on": tier(),
    "partial": tier(rollout=40),
    "split": tier(split=(("gold", 200), ("silver", 300), ("bronze", 500))),
    "split-zero-weight": tier(split=(("gold", 0), ("silver", 1000))),
    "split-partial-lists": tier(
        rollout=50,
        split=(("gold", 500), ("silver", 500)),
        tenants_on=frozenset({"tenant-0005", "a\\", " padded "}),
        tenants_off=frozenset({"tenant-0003", "tab-end\u00a0"}),
    ),
    "pins": tier(
        rollout=30,
        tenant_variants=(("tenant-0001", "silver"), ("tenant-0002", "bronze"), ("a\\", "silver")),
        tenants_on=frozenset({"tenant-0002"}),
    ),
    "pins-split": tier(
        split=(("silver", 600), ("bronze", 400)),
        tenant_variants=(("tenant-0009", "gold"), (" padded ", "safe")),
        tenants_off=frozenset({"tenant-0004"}),
    ),
    "pins-only-listed": tier(
        rollout=0,
        tenants_on=frozenset({"tenant-0007", "tenant-0008"}),
        tenant_variants=(("tenant-0008", "bronze"),),
    ),
    "listed-only": tier(rollout=0, tenants_on=frozenset({"tenant-0007"})),
    "off-in-list": tier(tenants_off=frozenset({"tenant-0001", "a\\"})),
    "disabled": tier(enabled=False),
    "number": FlagState(
        enabled=True,
        rollout=60,
        type=FlagType.NUMBER,
        variants=(Variant("short", 30), Variant("ratio", 2.5), Variant("big", 10**12)),
        off_variant="short",
        on_variant="ratio",
        split=(("ratio", 500), ("big", 500)),
    ).check_variants(),
    "json": FlagState(
        enabled=True,
        rollout=100,
        type=FlagType.JSON,
        variants=(Variant("a", {"cols": [1, 2], "ü": True}), Variant("b", None), Variant("c", 7)),
        off_variant="b",
        on_variant="a",
        split=(("a", 700), ("c", 300)),
        tenant_variants=(("tenant-0011", "b"),),
    ).check_variants(),
    "json-string-value": FlagState(
        enabled=True,
        rollout=100,
        type=FlagType.JSON,
        variants=(Variant("a", "text"), Variant("b", [])),
        off_variant="b",
        on_variant="a",
    ).check_variants(),
}


def served(state: FlagState) -> list[tuple[Any, Any]]:
    client = FlagClient.from_snapshot(Snapshot("p", 1, {"f": state}))
    return [client.variant("f", t)[:2] for t in [None, *TENANTS]]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_state_from_feature__typed_shape__serves_what_the_original_serves(shape: str) -> None:
    """Every tenant (and no tenant, and "") gets the same variant and value back."""
    state = SHAPES[shape]
    back = state_from_feature(feature_from_state("f", state))
    assert back is not None
    assert served(back) == served(state)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_state_from_feature__typed_shape__keeps_every_field_a_feature_carries(shape: str) -> None:
    """Type, served variants and their values, off/on variant, split, pins, lists, rollout."""
    state = SHAPES[shape]
    back = state_from_feature(feature_from_state("f", state))
    assert back is not None
    assert back.type is state.type
    assert back.off_variant == state.off_variant
    assert back.enabled is state.enabled
    values = {v.name: v.value for v in state.variants}
    assert all(values[v.name] == v.value for v in back.variants)
    if state.enabled:
        assert (back.rollout, back.split) == (state.rollout, state.split)
        assert (back.tenants_on, back.tenants_off) == (state.tenants_on, state.tenants_off)
        assert back.tenant_variants == tuple(sorted(state.tenant_variants))
        if not state.split or state.rollout >= 100:
            assert back.on_variant == state.on_variant
    # Mapping the read-back state again gives the very same feature.
    assert feature_from_state("f", back) == feature_from_state("f", state)


def test_state_from_feature__killed__reads_back_disabled_serving_the_safe_value() -> None:
    """Unleash has no kill switch: a killed typed flag reads back disabled, same safe value."""
    killed = replace(SHAPES["split"], killed=True)
    back = state_from_feature(feature_from_state("f", killed))
    assert back is not None and back.enabled is False and back.killed is False
    assert served(back) == served(killed) == [("safe", "X")] * (len(TENANTS) + 1)


def test_state_from_feature__unserved_variant__not_read_back() -> None:
    """A declared variant that no strategy serves is not in the feature, so not read back."""
    back = state_from_feature(feature_from_state("f", SHAPES["on"]))
    assert back is not None
    assert {v.name for v in back.variants} == {"gold", "safe"}


def test_parse_features__typed_payload__a_client_serves_the_same_values() -> None:
    """What FlagClient.from_unleash builds from a payload: a snapshot holding every
    typed flag, whose value() equals the original's for every tenant."""
    raw = json.dumps(features_payload(Snapshot("p", 1, SHAPES)))
    snapshot, foreign = parse_features(raw, "production", 1)
    assert foreign == {} and set(snapshot.flags) == set(SHAPES)
    original = FlagClient.from_snapshot(Snapshot("p", 1, SHAPES))
    read_back = FlagClient.from_snapshot(snapshot)
    for key in SHAPES:
        default = {FlagType.STRING: "", FlagType.NUMBER: 0, FlagType.JSON: None}
        d = default[SHAPES[key].type]
        assert [read_back.value(key, d, t) for t in TENANTS] == [
            original.value(key, d, t) for t in TENANTS
        ], key


@pytest.mark.parametrize(
    "mutate",
    [
        lambda f: f["strategies"][0]["variants"][0].update(weight="100"),
        lambda f: f["strategies"][0]["variants"][0]["payload"].update(type="csv"),
        lambda f: f["strategies"][0]["variants"][0]["payload"].update(value="{not json"),
        lambda f: f["strategies"][0]["parameters"].update(groupId="other"),
        lambda f: f["strategies"][-1]["variants"].append(f["strategies"][0]["variants"][0]),
        lambda f: f["strategies"].insert(0, {"name": "userWithId", "parameters": {}}),
        lambda f: f.update(variants=[{"name": "x", "weight": 1000}]),
    ],
    ids=["weight-not-int", "csv-payload", "bad-json", "other-group", "two-off", "foreign", "fv"],
)
def test_state_from_feature__typed_feature_not_in_flagrails_shape__none(mutate: Any) -> None:
    """Anything flagrail would not have written is left to the Unleash engine (None)."""
    feature = feature_from_state("f", SHAPES["pins-split"])
    mutate(feature)
    assert state_from_feature(feature) is None
