"""Bucketing: Unleash-compatible buckets, checked against the Unleash client specification.

The specification (v6.1.0, with its licence) lives in ``tests/data/unleash-client-spec``;
``FLAGRAIL_UNLEASH_SPEC`` points elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flags.bucketing import assign_bucket, in_rollout
from flags.evaluate import evaluate
from flags.model import FlagState

REPO = Path(__file__).resolve().parents[1]
SPEC = Path(
    os.environ.get(
        "FLAGRAIL_UNLEASH_SPEC", REPO / "tests" / "data" / "unleash-client-spec" / "specifications"
    )
)
# Suite -> how many of its cases are single-strategy rollouts we can compare.
SUITES = {"03-gradual-rollout-user-id-strategy.json": 4, "10-flexible-rollout-strategy.json": 10}
ROLLOUT_STRATEGIES = {"gradualRolloutUserId", "flexibleRollout"}


def _spec_cases(suite: str) -> list[tuple[str, str, int, str | None, bool]]:
    """(description, groupId, percentage, tenant, expected) for each single-strategy rollout
    case that has a stickiness id (Unleash's gradualRolloutUserId has no 'no user' answer)."""
    path = SPEC / suite
    data = json.loads(path.read_text(encoding="utf-8"))
    features = {f["name"]: f for f in data["state"]["features"]}
    out = []
    for test in data["tests"]:
        strategies = features[test["toggleName"]]["strategies"]
        if len(strategies) != 1 or strategies[0]["name"] not in ROLLOUT_STRATEGIES:
            continue
        strategy: dict[str, Any] = strategies[0]
        params = strategy["parameters"]
        context = test["context"]
        if strategy["name"] == "gradualRolloutUserId":
            tenant, percentage = context.get("userId"), int(params["percentage"])
            if tenant is None:
                continue
        else:
            stickiness = params.get("stickiness", "default")
            percentage = int(params["rollout"])
            if stickiness == "default":
                tenant = context.get("userId") or context.get("sessionId")
            else:
                tenant = context.get(stickiness)
        out.append(
            (test["description"], params["groupId"], percentage, tenant, test["expectedResult"])
        )
    return out


@pytest.mark.parametrize("suite", SUITES)
def test_assign_bucket__unleash_spec_rollout_cases__same_answer(suite: str) -> None:
    """Every rollout case of the suite gets Unleash's answer from our bucket and precedence."""
    # When: each case's groupId plays the flag key and its stickiness id the tenant
    cases = _spec_cases(suite)
    assert len(cases) == SUITES[suite], f"{suite}: expected {SUITES[suite]} rollout cases"
    for description, group, percentage, tenant, expected in cases:
        state = FlagState(enabled=True, rollout=percentage)
        # Then: the pure evaluation answers what the specification expects
        assert evaluate(group, state, tenant).enabled is expected, description
        if tenant is not None:
            assert in_rollout(group, tenant, percentage) is expected, description


def test_assign_bucket__known_vectors__pinned() -> None:
    """Buckets of known ids never change between releases (murmur3 x86_32, seed 0)."""
    assert assign_bucket("AB12A", "122") <= 50 < assign_bucket("AB12A", "155")
    assert assign_bucket("Feature.flexibleRollout.10", "174") <= 10
    assert assign_bucket("Feature.flexibleRollout.10", "499") > 10
    assert [assign_bucket("auth.cache.l2", t) for t in ("acme", "globex", "wayne")] == [74, 6, 49]


keys = st.from_regex(r"\A[a-z][a-z0-9_.-]{0,30}\Z")
tenants = st.text(min_size=1, max_size=40).filter(lambda t: t.isprintable())


@settings(max_examples=300, deadline=None)
@given(key=keys, tenant=tenants)
def test_assign_bucket__any_tenant__stable_and_in_range(key: str, tenant: str) -> None:
    """A bucket is in 1..100 and the same on every call."""
    bucket = assign_bucket(key, tenant)
    assert 1 <= bucket <= 100
    assert assign_bucket(key, tenant) == bucket


@settings(max_examples=300, deadline=None)
@given(key=keys, tenant=tenants, low=st.integers(0, 100), high=st.integers(0, 100))
def test_in_rollout__raising_percentage__never_drops_a_tenant(
    key: str, tenant: str, low: int, high: int
) -> None:
    """Rollout is monotonic: on at p stays on at every q >= p; on exactly when bucket <= p."""
    low, high = min(low, high), max(low, high)
    assert in_rollout(key, tenant, low) == (assign_bucket(key, tenant) <= low)
    if in_rollout(key, tenant, low):
        assert in_rollout(key, tenant, high)


@settings(max_examples=150, deadline=None)
@given(key=keys, tenant=tenants, rollout=st.integers(0, 100))
def test_in_rollout__random_tenants__agrees_with_unleash_engine(
    key: str, tenant: str, rollout: int
) -> None:
    """Unleash's own engine (yggdrasil, shipped with UnleashClient) puts each tenant on the
    same side of a flexibleRollout with groupId = flag key."""
    engine_module = pytest.importorskip("yggdrasil_engine.engine")
    engine = engine_module.UnleashEngine()
    strategy = {
        "name": "flexibleRollout",
        "parameters": {"rollout": str(rollout), "stickiness": "userId", "groupId": key},
        "constraints": [],
    }
    engine.take_state(
        json.dumps(
            {"version": 1, "features": [{"name": key, "enabled": True, "strategies": [strategy]}]}
        )
    )
    assert engine.check_enabled(key, {"userId": tenant}).is_enabled == in_rollout(
        key, tenant, rollout
    )
