"""Typed flags through the Unleash mapping: Unleash's own engine (yggdrasil, what
UnleashClient 6 runs) picks the variant and payload flagrail's FlagClient serves,
for every shape, for thousands of tenants and for no tenant."""

from __future__ import annotations

import json
from typing import Any

import pytest
from yggdrasil_engine.engine import UnleashEngine

from flags.client import FlagClient
from flags.model import FlagState, FlagType, Snapshot, Variant
from flags.unleash.mapping import TENANT_FIELD, feature_from_state, features_payload

TIERS = (Variant("gold", "G"), Variant("silver", "S"), Variant("bronze", "B"), Variant("safe", "X"))
TENANTS = [f"tenant-{i:05d}" for i in range(3000)] + ["ünï-t", "a\\", "x" * 200]


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
    "split": tier(split=(("gold", 200), ("silver", 300), ("bronze", 500))),
    "split-half": tier(
        rollout=50,
        split=(("gold", 500), ("silver", 500)),
        tenants_on=frozenset({"tenant-00005", "a\\"}),
        tenants_off=frozenset({"tenant-00003"}),
    ),
    "pins": tier(
        rollout=30,
        tenant_variants=(("tenant-00001", "silver"), ("tenant-00002", "bronze"), ("a\\", "silver")),
        tenants_on=frozenset({"tenant-00002"}),
    ),
    "pins-split": tier(
        split=(("silver", 600), ("bronze", 400)), tenant_variants=(("tenant-00009", "gold"),)
    ),
    "listed-only": tier(rollout=0, tenants_on=frozenset({"tenant-00007"})),
    "killed": tier(killed=True, split=(("gold", 1000),)),
    "disabled": tier(enabled=False),
    "number": FlagState(
        enabled=True,
        rollout=60,
        type=FlagType.NUMBER,
        variants=(Variant("short", 30), Variant("ratio", 2.5)),
        off_variant="short",
        on_variant="ratio",
    ).check_variants(),
    "json": FlagState(
        enabled=True,
        rollout=100,
        type=FlagType.JSON,
        variants=(Variant("a", {"cols": [1, 2], "ü": True}), Variant("b", None)),
        off_variant="b",
        on_variant="a",
        split=(("a", 700), ("b", 300)),
    ).check_variants(),
}


@pytest.fixture(scope="module")
def engine() -> UnleashEngine:
    engine = UnleashEngine()
    warnings = engine.take_state(json.dumps(features_payload(Snapshot("p", 1, SHAPES))))
    assert warnings is None, warnings
    return engine


def payload_value(payload: dict[str, str]) -> Any:
    return payload["value"] if payload["type"] == "string" else json.loads(payload["value"])


@pytest.mark.parametrize("key", list(SHAPES))
def test_typed_feature__every_tenant__unleash_engine_serves_flagrails_variant(
    engine: UnleashEngine, key: str
) -> None:
    """Variant name and payload agree for 3,003 tenants and for no tenant."""
    client = FlagClient.from_snapshot(Snapshot("p", 1, SHAPES))
    for tenant in [None, *TENANTS]:
        context = {} if tenant is None else {"properties": {TENANT_FIELD: tenant}}
        got = engine.get_variant(key, context).variant
        name, value, _ = client.variant(key, tenant)
        assert (got.name, payload_value(got.payload)) == (name, value), (key, tenant)


def test_typed_feature__killed__serves_the_safe_value_not_disabled(engine: UnleashEngine) -> None:
    """An Unleash SDK gets the declared safe value under a kill, not 'disabled'."""
    got = engine.get_variant("killed", {"properties": {TENANT_FIELD: "acme"}}).variant
    assert (got.name, got.payload) == ("safe", {"type": "string", "value": "X"})


def test_typed_feature__strategies_carry_tenant_stickiness_and_the_key_as_group() -> None:
    feature = feature_from_state("prices.tier", SHAPES["split"])
    for strategy in feature["strategies"][:-1]:
        assert strategy["parameters"]["stickiness"] == TENANT_FIELD
        assert strategy["parameters"]["groupId"] == "prices.tier"
        assert all(v["stickiness"] == TENANT_FIELD for v in strategy["variants"])
    assert feature["strategies"][-1]["variants"][0]["name"] == "safe"


def test_boolean_feature__unchanged_shape() -> None:
    """A boolean flag's feature has no strategy variants (as before typed flags)."""
    feature = feature_from_state("a", FlagState(enabled=True, rollout=100))
    assert feature == {
        "name": "a",
        "enabled": True,
        "strategies": [{"name": "default", "parameters": {}, "constraints": []}],
        "variants": [],
    }
