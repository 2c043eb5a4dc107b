"""Unleash client specification 16 (strategy variants), through flagrail's pick.

flagrail serves typed flags as strategy variants (``flags.unleash.mapping``); the cases of
suite 16 that pick a variant among a strategy's variants by a stickiness value are run
through flagrail's variant bucket (``flags.bucketing.variant_bucket``, the stickiness value
standing for the tenant, the strategy's ``groupId`` for the flag key). The others use what
flagrail has no feature for, and are listed with the reason, not skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flags.bucketing import variant_bucket

SPEC = (
    Path(__file__).parent.parent
    / "data/unleash-client-spec/specifications/16-strategy-variants.json"
)
DATA = json.loads(SPEC.read_text(encoding="utf-8"))
FEATURES = {f["name"]: f for f in DATA["state"]["features"]}
STICKY_FIELDS = ("userId", "clientId")


def left_out_reason(feature: dict[str, Any], case: dict[str, Any]) -> str | None:
    """Why flagrail cannot express a case, or None when it can."""
    strategies = feature["strategies"]
    if any(s.get("constraints") for s in strategies):
        return "constraint on another context field (environment)"
    if not any(s.get("variants") for s in strategies):
        return "no strategy variants (feature-level variants or disabled)"
    return None


CASES = []
LEFT_OUT = {}
for case in DATA["variantTests"]:
    feature = FEATURES[case["toggleName"]]
    reason = left_out_reason(feature, case)
    if reason is None:
        CASES.append(pytest.param(feature, case, id=case["description"][:60]))
    else:
        LEFT_OUT[case["description"]] = reason


def test_spec16__cases_left_out__only_the_documented_kinds() -> None:
    """Six of eleven cases use constraints on other fields or feature-level variants;
    five pick among strategy variants and run below. Anything else fails here."""
    assert len(LEFT_OUT) == 6, LEFT_OUT
    assert len(CASES) == 5


@pytest.mark.parametrize(("feature", "case"), CASES)
def test_spec16__strategy_variant_pick__agrees(
    feature: dict[str, Any], case: dict[str, Any]
) -> None:
    """The strategy's variants, its groupId and the stickiness value pick the spec's
    variant through flagrail's bucket and cumulative weights."""
    strategy = next(s for s in feature["strategies"] if s.get("variants"))
    variants = strategy["variants"]
    stickiness = variants[0].get("stickiness") or strategy["parameters"].get("stickiness")
    field = "userId" if stickiness in (None, "default") else stickiness
    context = case["context"]
    value = context.get(field, context.get("properties", {}).get(field))
    assert field in STICKY_FIELDS and isinstance(value, str)
    total = sum(v["weight"] for v in variants)
    bucket = variant_bucket(strategy["parameters"]["groupId"], value, total)
    cumulative, name = 0, None
    for v in variants:
        cumulative += v["weight"]
        if cumulative >= bucket:
            name = v["name"]
            break
    assert name == case["expectedResult"]["name"]
