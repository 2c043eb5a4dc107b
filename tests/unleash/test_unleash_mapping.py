"""flags.unleash.mapping: every state maps to a feature Unleash's own engine evaluates
exactly as flags.evaluate does; the payload has the shape of the client specification."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yggdrasil_engine.engine import UnleashEngine

from flags.evaluate import evaluate
from flags.model import FlagState, Snapshot, is_valid_tenant
from flags.unleash.mapping import (
    API_VERSION,
    TENANT_FIELD,
    feature_from_state,
    features_payload,
    state_from_feature,
)

SPEC_DIR = Path(__file__).resolve().parents[1] / "data" / "unleash-client-spec"
POOL = ["acme", "globex", "initech", "umbrella", "Acme", "acme ", "tënant-ü", "x" * 200, "42"]


tenants = st.one_of(
    st.sampled_from(POOL),
    st.text(min_size=1, max_size=12).filter(is_valid_tenant),
    st.text(min_size=0, max_size=6).map(lambda t: t + "\\").filter(is_valid_tenant),
)
tenant_sets = st.frozensets(tenants, max_size=4)
states = st.builds(
    FlagState,
    enabled=st.booleans(),
    rollout=st.one_of(st.sampled_from([0, 1, 50, 99, 100]), st.integers(0, 100)),
    tenants_on=tenant_sets,
    tenants_off=tenant_sets,
    killed=st.booleans(),
)
flag_keys = st.from_regex(r"[a-z][a-z0-9_.-]{0,30}", fullmatch=True)


@pytest.fixture(scope="module")
def engine() -> UnleashEngine:
    """Unleash's own evaluation engine (yggdrasil, what UnleashClient 6 runs)."""
    return UnleashEngine()


def unleash_answer(engine: UnleashEngine, key: str, tenant: str | None) -> bool:
    context: dict[str, Any] = {} if tenant is None else {"properties": {TENANT_FIELD: tenant}}
    result = engine.check_enabled(key, context)
    assert result.is_found, f"engine does not know {key!r}"
    return result.is_enabled


def load(engine: UnleashEngine, snapshot: Snapshot) -> None:
    warnings = engine.take_state(json.dumps(features_payload(snapshot)))
    assert warnings is None, warnings


class TestFeatureFromState:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(key=flag_keys, state=states, extra=st.lists(tenants, max_size=8))
    def test_feature_from_state__any_state_and_tenant__unleash_engine_agrees_with_evaluate(
        self, engine: UnleashEngine, key: str, state: FlagState, extra: list[str]
    ) -> None:
        """Unleash's engine gives flagrail's answer for listed, unlisted and no tenant."""
        # When: the mapped feature is loaded into Unleash's engine
        load(engine, Snapshot("production", 1, {key: state}))
        # Then: every tenant (and no tenant) gets evaluate()'s answer
        for tenant in [None, *state.tenants_on, *state.tenants_off, *POOL, *extra]:
            expected = evaluate(key, state, tenant).enabled
            assert unleash_answer(engine, key, tenant) is expected, (key, state, tenant)

    def test_feature_from_state__2000_tenants_each_shape__unleash_engine_agrees(
        self, engine: UnleashEngine
    ) -> None:
        """The named shapes, 2,000 tenants each: hashing and bucket edges line up."""
        listed_on = frozenset(f"tenant-{i}" for i in range(0, 40))
        listed_off = frozenset(f"tenant-{i}" for i in range(40, 80))
        shapes = {f"rollout-{p}": FlagState(enabled=True, rollout=p) for p in (0, 1, 50, 99, 100)}
        shapes["combined"] = FlagState(
            enabled=True, rollout=50, tenants_on=listed_on, tenants_off=listed_off
        )
        load(engine, Snapshot("production", 1, shapes))
        for key, state in shapes.items():
            for i in range(2_000):
                tenant = f"tenant-{i}"
                assert unleash_answer(engine, key, tenant) is evaluate(key, state, tenant).enabled

    def test_feature_from_state__killed_or_disabled__enabled_false_without_strategies(
        self,
    ) -> None:
        """A kill or a disable is ``enabled: false``, whatever else the state holds."""
        full = FlagState(enabled=True, rollout=100, tenants_on=frozenset({"acme"}), killed=True)
        for state in (full, FlagState(enabled=False, rollout=100)):
            assert feature_from_state("f", state) == {
                "name": "f",
                "enabled": False,
                "strategies": [],
                "variants": [],
            }

    def test_feature_from_state__enabled_rollout_zero_no_tenants_on__a_strategy_matching_nobody(
        self, engine: UnleashEngine
    ) -> None:
        """Enabled at rollout 0 must not become Unleash's 'no strategies = everyone on'."""
        feature = feature_from_state("f", FlagState(enabled=True, rollout=0))
        assert feature["enabled"] is True
        assert feature["strategies"] == [
            {
                "name": "flexibleRollout",
                "parameters": {"rollout": "0", "stickiness": TENANT_FIELD, "groupId": "f"},
                "constraints": [],
            }
        ]
        load(engine, Snapshot("p", 1, {"f": FlagState(enabled=True, rollout=0)}))
        assert not any(unleash_answer(engine, "f", t) for t in [None, *POOL])

    def test_feature_from_state__tenants_off__not_in_on_every_strategy(self) -> None:
        """Strategies are ORed, so the exclusion is repeated on each of them."""
        state = FlagState(
            enabled=True,
            rollout=30,
            tenants_on=frozenset({"b", "a"}),
            tenants_off=frozenset({"z", "y"}),
        )
        strategies = feature_from_state("f", state)["strategies"]
        assert [s["name"] for s in strategies] == ["default", "flexibleRollout"]
        assert strategies[0]["constraints"][0]["operator"] == "IN"
        assert strategies[0]["constraints"][0]["values"] == ["a", "b"]
        for strategy in strategies:
            not_in = [
                c
                for c in strategy["constraints"]
                if c["operator"] == "NOT_IN" and c["values"] != [""]  # the empty-tenant guard
            ]
            assert not_in == [
                {
                    "contextName": TENANT_FIELD,
                    "operator": "NOT_IN",
                    "values": ["y", "z"],
                    "inverted": False,
                    "caseInsensitive": False,
                }
            ]

    def test_feature_from_state__rollout_100__plain_default_strategy(self) -> None:
        feature = feature_from_state("f", FlagState(enabled=True, rollout=100))
        assert feature["strategies"] == [{"name": "default", "parameters": {}, "constraints": []}]

    def test_features_payload__snapshot__sorted_features_string_parameters(self) -> None:
        """Features come sorted by name; every strategy parameter is a string."""
        snapshot = Snapshot(
            "production",
            7,
            {k: FlagState(enabled=True, rollout=r) for k, r in (("b", 50), ("a", 100), ("c", 1))},
        )
        payload = features_payload(snapshot)
        assert payload["version"] == API_VERSION
        assert payload["segments"] == []
        assert [f["name"] for f in payload["features"]] == ["a", "b", "c"]
        for feature in payload["features"]:
            for strategy in feature["strategies"]:
                assert all(isinstance(v, str) for v in strategy["parameters"].values())

    def test_features_payload__no_flags__empty_feature_list(self) -> None:
        assert features_payload(Snapshot("production", 0, {})) == {
            "version": API_VERSION,
            "features": [],
            "segments": [],
        }


class TestStateFromFeature:
    @settings(max_examples=200, deadline=None)
    @given(key=flag_keys, state=states, extra=st.lists(tenants, max_size=5))
    def test_state_from_feature__mapped_state__evaluates_as_the_original(
        self, key: str, state: FlagState, extra: list[str]
    ) -> None:
        """The inverse holds up to evaluation (a kill reads back as disabled)."""
        back = state_from_feature(feature_from_state(key, state))
        assert back is not None
        for tenant in [None, *state.tenants_on, *state.tenants_off, *POOL, *extra]:
            assert evaluate(key, back, tenant).enabled is evaluate(key, state, tenant).enabled

    def test_state_from_feature__enabled_without_strategies__on_for_everyone(self) -> None:
        state = state_from_feature({"name": "f", "enabled": True, "strategies": []})
        assert state == FlagState(enabled=True, rollout=100)

    @pytest.mark.parametrize(
        "strategy",
        [
            {"name": "userWithId", "parameters": {"userIds": "1,2"}},
            {"name": "flexibleRollout", "parameters": {"rollout": "5", "stickiness": "userId"}},
            {
                "name": "flexibleRollout",
                "parameters": {"rollout": "5", "stickiness": TENANT_FIELD, "groupId": "other"},
            },
            {
                "name": "default",
                "parameters": {},
                "constraints": [{"contextName": "userId", "operator": "IN", "values": ["1"]}],
            },
            {
                "name": "default",
                "parameters": {},
                "constraints": [
                    {"contextName": TENANT_FIELD, "operator": "STR_STARTS_WITH", "values": ["a"]}
                ],
            },
            {"name": "default", "parameters": {}, "segments": [1]},
        ],
        ids=["userWithId", "user-stickiness", "foreign-group", "user-in", "starts-with", "segment"],
    )
    def test_state_from_feature__foreign_strategy__none(self, strategy: dict[str, Any]) -> None:
        """Anything flagrail cannot express is reported as such, not guessed."""
        assert state_from_feature({"name": "f", "enabled": True, "strategies": [strategy]}) is None

    def test_state_from_feature__disabled__disabled_state(self) -> None:
        state = state_from_feature({"name": "f", "enabled": False, "strategies": []})
        assert state == FlagState(enabled=False)


def spec_states() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((SPEC_DIR / "specifications").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("state"), dict):
            yield path.name, data["state"]


@pytest.fixture(scope="module")
def allowed() -> dict[str, set[str]]:
    """The keys each level of a ``state`` object uses across the specification."""
    keys: dict[str, set[str]] = {
        "state": set(),
        "feature": set(),
        "strategy": set(),
        "constraint": set(),
    }
    for _name, state in spec_states():
        keys["state"] |= set(state)
        for feature in state.get("features", []):
            keys["feature"] |= set(feature)
            for strategy in feature.get("strategies") or []:
                keys["strategy"] |= set(strategy)
                for constraint in strategy.get("constraints") or []:
                    keys["constraint"] |= set(constraint)
    assert all(keys.values()), keys
    return keys


class TestSpecificationShape:
    def test_features_payload__every_shape__uses_only_specification_fields(
        self, allowed: dict[str, set[str]], engine: UnleashEngine
    ) -> None:
        """Every key the payload uses appears in the specification's states, with its type."""
        flags = {
            "on": FlagState(enabled=True, rollout=100),
            "off": FlagState(),
            "killed": FlagState(enabled=True, rollout=100, killed=True),
            "rollout": FlagState(enabled=True, rollout=50),
            "none": FlagState(enabled=True, rollout=0),
            "lists": FlagState(
                enabled=True,
                rollout=99,
                tenants_on=frozenset({"a"}),
                tenants_off=frozenset({"b"}),
            ),
        }
        payload = json.loads(json.dumps(features_payload(Snapshot("production", 3, flags))))
        assert set(payload) <= allowed["state"]
        assert payload["version"] in {1, 2}
        assert isinstance(payload["segments"], list)
        for feature in payload["features"]:
            assert set(feature) <= allowed["feature"]
            assert isinstance(feature["name"], str)
            assert isinstance(feature["enabled"], bool)
            for strategy in feature["strategies"]:
                assert set(strategy) <= allowed["strategy"]
                assert isinstance(strategy["name"], str)
                assert all(isinstance(v, str) for v in strategy["parameters"].values())
                for constraint in strategy["constraints"]:
                    assert set(constraint) <= allowed["constraint"]
                    assert all(isinstance(v, str) for v in constraint["values"])
        load(engine, Snapshot("production", 3, flags))  # and the engine takes it without warnings

    def test_specification_states__parsed_by_state_from_feature__never_raises(
        self, allowed: dict[str, set[str]]
    ) -> None:
        """Foreign features (every feature of the specification) parse or give None."""
        count = 0
        for _name, state in spec_states():
            for feature in state.get("features", []):
                result = state_from_feature(feature)
                assert result is None or isinstance(result, FlagState)
                count += 1
        assert count > 100


def test_feature_from_state__tenants_ending_in_backslash__unleash_engine_agrees(
    engine: UnleashEngine,
) -> None:
    """Unleash's engine mis-reads an IN/NOT_IN value ending in a backslash (it matches
    nobody); the mapping puts such tenants in a REGEX constraint, and the answers agree."""
    odd = frozenset({"odd\\", "a.b*\\", "(x)|y\\", "\\"})
    shapes = {
        "f.off": FlagState(enabled=True, rollout=100, tenants_off=odd | {"plain"}),
        "f.on": FlagState(enabled=True, rollout=0, tenants_on=odd | {"plain"}),
        "f.both": FlagState(
            enabled=True, rollout=50, tenants_on=frozenset({"odd\\"}), tenants_off=odd - {"odd\\"}
        ),
    }
    load(engine, Snapshot("production", 1, shapes))
    probes = [*odd, "plain", "odd", "a.b*", "x", "y\\", "acme", None]
    for key, state in shapes.items():
        for tenant in probes:
            expected = evaluate(key, state, tenant).enabled
            assert unleash_answer(engine, key, tenant) is expected, (key, tenant)
