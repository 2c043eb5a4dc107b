"""The empty tenant is no tenant, everywhere: ``evaluate``, every ``FlagClient`` check, and
Unleash's engine reading flagrail's features (``tenantId NOT_IN [""]`` on rollouts)."""

from __future__ import annotations

import json

import pytest
from yggdrasil_engine.engine import UnleashEngine

from flags.client import FlagClient
from flags.evaluate import evaluate
from flags.model import FlagState, FlagType, Snapshot, Variant
from flags.unleash.mapping import TENANT_FIELD, feature_from_state, features_payload

VARIANTS = (Variant("a", "A"), Variant("b", "B"), Variant("safe", "S"))


def typed(**extra: object) -> FlagState:
    fields: dict[str, object] = {
        "enabled": True,
        "rollout": 100,
        "type": FlagType.STRING,
        "variants": VARIANTS,
        "off_variant": "safe",
        "on_variant": "a",
    }
    fields.update(extra)
    return FlagState(**fields).check_variants()  # type: ignore[arg-type]


STATES = {
    **{f"rollout-{p}": FlagState(enabled=True, rollout=p) for p in (0, 1, 7, 50, 99, 100)},
    "listed": FlagState(enabled=True, rollout=0, tenants_on=frozenset({"acme"})),
    "off-listed": FlagState(enabled=True, rollout=100, tenants_off=frozenset({"acme"})),
    "killed": FlagState(enabled=True, rollout=100, killed=True),
    "typed-split": typed(split=(("a", 500), ("b", 500))),
    "typed-partial": typed(rollout=50, split=(("a", 500), ("b", 500))),
    "typed-pins": typed(rollout=50, tenant_variants=(("acme", "b"),)),
}


@pytest.mark.parametrize("key", list(STATES))
def test_empty_tenant__every_check__answers_as_no_tenant(key: str) -> None:
    """is_enabled, evaluate, value and variant give "" exactly the answer of None."""
    state = STATES[key]
    client = FlagClient.from_snapshot(Snapshot("p", 1, {key: state}))
    assert client.is_enabled(key, "", True) is client.is_enabled(key, None, True)
    assert client.evaluate(key, "", True) == client.evaluate(key, None, True)
    assert evaluate(key, state, "", True) == evaluate(key, state, None, True)
    assert client.variant(key, "") == client.variant(key, None)
    assert client.value(key, "default", "") == client.value(key, "default", None)
    assert client.stats()["errors"] == 0


def test_empty_tenant__unleash_engine__answers_as_flagrail() -> None:
    """Unleash's engine, which would hash "" into a rollout bucket, answers "" as no
    tenant on flagrail's features: the rollout strategies exclude it."""
    engine = UnleashEngine()
    assert engine.take_state(json.dumps(features_payload(Snapshot("p", 1, STATES)))) is None
    client = FlagClient.from_snapshot(Snapshot("p", 1, STATES))
    for key, state in STATES.items():
        context = {"properties": {TENANT_FIELD: ""}}
        if state.type is FlagType.BOOLEAN:
            assert engine.is_enabled(key, context).is_enabled is client.is_enabled(key, ""), key
        else:
            got = engine.get_variant(key, context).variant
            assert (got.name, got.payload["value"]) == client.variant(key, "")[:2], key


@pytest.mark.parametrize("tenant", [" lead", "trail ", "\u00a0nbsp", "bom\ufeff", "back\\"])
def test_edge_tenant__listed__regex_not_in_list(tenant: str) -> None:
    """Tenants the Node SDK would trim (or Unleash's engine mis-read) are never written
    into an IN/NOT_IN list, and Unleash's engine still finds them."""
    state = FlagState(enabled=True, rollout=0, tenants_on=frozenset({tenant, "plain"}))
    feature = feature_from_state("f", state)
    listed = [
        value
        for strategy in feature["strategies"]
        for constraint in strategy["constraints"]
        for value in constraint.get("values", [])
    ]
    assert listed == ["plain"]
    engine = UnleashEngine()
    engine.take_state(json.dumps(features_payload(Snapshot("p", 1, {"f": state}))))
    for asked in (tenant, tenant.strip(" \u00a0\ufeff\\"), "plain"):
        on = engine.is_enabled("f", {"properties": {TENANT_FIELD: asked}}).is_enabled
        assert on is (asked in state.tenants_on), asked
