"""The flag model: name validators, state JSON round trips, state changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flags.errors import ValidationError
from flags.model import (
    MAX_TENANT_LIST,
    FlagChanged,
    FlagState,
    Role,
    Snapshot,
    StateChange,
    TokenInfo,
    validate_environment_name,
    validate_flag_key,
    validate_rollout,
    validate_tenant,
    validate_tenants,
)


class TestValidateEnvironmentName:
    @pytest.mark.parametrize("name", ["production", "qa", "eu-west-1", "a" * 40])
    def test_validate_environment_name__valid__returned(self, name: str) -> None:
        """Lower-case names starting with a letter, up to 40 characters, are accepted."""
        assert validate_environment_name(name) == name

    @pytest.mark.parametrize("name", ["", "Prod", "1st", "a" * 41, "a_b", "a b", None, 3])
    def test_validate_environment_name__invalid__raises_naming_field(self, name: object) -> None:
        """Anything else raises ValidationError naming the field."""
        with pytest.raises(ValidationError) as info:
            validate_environment_name(name, "env")
        assert info.value.field == "env"


class TestValidateFlagKey:
    @pytest.mark.parametrize("key", ["auth.cache.l2", "a", "a_b-c.d9", "a" * 100])
    def test_validate_flag_key__valid__returned(self, key: str) -> None:
        """Keys like auth.cache.l2, up to 100 characters, are accepted."""
        assert validate_flag_key(key) == key

    @pytest.mark.parametrize("key", ["", "Auth", ".a", "a" * 101, "a/b", "a b", "é", None])
    def test_validate_flag_key__invalid__raises_naming_field(self, key: object) -> None:
        """Anything else raises ValidationError naming the key."""
        with pytest.raises(ValidationError) as info:
            validate_flag_key(key)
        assert info.value.field == "key"


class TestValidateTenant:
    @pytest.mark.parametrize("tenant", ["acme", "x" * 200, "café 東京", "a\u2028b"])
    def test_validate_tenant__valid__returned(self, tenant: str) -> None:
        """Non-empty strings of at most 200 characters without control characters pass."""
        assert validate_tenant(tenant) == tenant

    @pytest.mark.parametrize("tenant", ["", "x" * 201, "a\x00b", "tab\there", "\x7f", 5, None])
    def test_validate_tenant__invalid__raises(self, tenant: object) -> None:
        """Empty, too long, control characters or not a string: ValidationError."""
        with pytest.raises(ValidationError):
            validate_tenant(tenant, "tenants_on")

    def test_validate_tenants__over_ten_thousand__raises_naming_list(self) -> None:
        """A list of 10,001 tenants is refused, naming the list; 10,000 is fine."""
        assert len(validate_tenants([f"t{i}" for i in range(MAX_TENANT_LIST)], "x")) == 10_000
        with pytest.raises(ValidationError) as info:
            validate_tenants([f"t{i}" for i in range(MAX_TENANT_LIST + 1)], "tenants_off")
        assert info.value.field == "tenants_off"


@pytest.mark.parametrize("value", [-1, 101, 50.0, True, "50", None])
def test_validate_rollout__out_of_range_or_not_int__raises(value: object) -> None:
    """Only integers 0..100 are a rollout (not bools, floats or strings)."""
    with pytest.raises(ValidationError) as info:
        validate_rollout(value)
    assert info.value.field == "rollout"


def test_flag_state__to_dict_from_dict__round_trips() -> None:
    """The JSON form of a state parses back to the same state, tenant lists sorted."""
    state = FlagState(
        enabled=True,
        rollout=40,
        tenants_on=frozenset({"b", "a"}),
        tenants_off=frozenset({"c"}),
        killed=True,
        kill_reason="storm",
        killed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        killed_by="alice",
        version=9,
    )
    data = state.to_dict()
    assert data["tenants_on"] == ["a", "b"]
    assert data["killed_at"] == "2026-01-02T03:04:05+00:00"
    assert FlagState.from_dict(data) == state


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"killed": 1}, "killed"),
        ({"version": -1}, "version"),
        ({"rollout": 101}, "rollout"),
        ({"tenants_on": [""]}, "tenants_on"),
        ({"killed_at": "not a time"}, "killed_at"),
    ],
)
def test_flag_state_from_dict__bad_field__raises_naming_it(data: dict, field: str) -> None:
    """A malformed state names the offending field."""
    with pytest.raises(ValidationError) as info:
        FlagState.from_dict(data)
    assert info.value.field == field


class TestStateChange:
    def test_state_change__empty__changes_nothing(self) -> None:
        """An empty change is empty and applies as the identity."""
        state = FlagState(enabled=True, rollout=5, tenants_on=frozenset({"a"}), version=3)
        assert StateChange().is_empty()
        assert StateChange().apply(state) == state

    def test_state_change__add_on__moves_tenant_from_off_list(self) -> None:
        """Adding a tenant to one list takes it off the other."""
        state = FlagState(tenants_off=frozenset({"acme", "globex"}))
        after = StateChange(tenants_on_add=frozenset({"acme"})).apply(state)
        assert after.tenants_on == {"acme"}
        assert after.tenants_off == {"globex"}
        back = StateChange(tenants_off_add=frozenset({"acme"})).apply(after)
        assert (back.tenants_on, back.tenants_off) == (frozenset(), {"acme", "globex"})

    def test_state_change__replace_and_fields__keeps_kill_and_version(self) -> None:
        """Replacing lists and fields leaves kill facts and the version to the store."""
        state = FlagState(killed=True, kill_reason="r", killed_by="bob", version=4)
        after = StateChange(enabled=True, rollout=30, tenants_on=frozenset({"x"})).apply(state)
        assert (after.enabled, after.rollout, after.tenants_on) == (True, 30, {"x"})
        assert (after.killed, after.kill_reason, after.killed_by, after.version) == (
            True,
            "r",
            "bob",
            4,
        )

    def test_state_change__result_over_limit__raises_naming_list(self) -> None:
        """Adding to a full list so it holds over 10,000 tenants is refused."""
        full = FlagState(tenants_on=frozenset(f"t{i}" for i in range(MAX_TENANT_LIST)))
        with pytest.raises(ValidationError) as info:
            StateChange(tenants_on_add=frozenset({"one-more"})).apply(full)
        assert info.value.field == "tenants_on"


def test_snapshot__round_trip__equal() -> None:
    """A snapshot's JSON parses back to an equal snapshot."""
    snap = Snapshot("production", 12, {"a.b": FlagState(enabled=True, rollout=100, version=2)})
    assert Snapshot.from_dict(snap.to_dict()) == snap


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ([], "snapshot"),
        ({"environment": 1}, "environment"),
        ({"environment": "p", "version": "1"}, "version"),
        ({"environment": "p", "flags": []}, "flags"),
    ],
)
def test_snapshot_from_dict__malformed__raises_naming_field(data: object, field: str) -> None:
    """A malformed snapshot body names what is wrong."""
    with pytest.raises(ValidationError) as info:
        Snapshot.from_dict(data)  # type: ignore[arg-type]
    assert info.value.field == field


def test_flag_changed__round_trip__equal_including_removal() -> None:
    """Change events round-trip, including state None for a flag that left the snapshot."""
    for event in (
        FlagChanged("beta", 3, "a.b", FlagState(enabled=True, version=1)),
        FlagChanged("beta", 4, "a.b", None),
    ):
        assert FlagChanged.from_dict(event.to_dict()) == event


def test_token_info__covers__scope_or_all() -> None:
    """A token without a scope covers every environment; a scoped one only its own."""
    now = datetime.now(UTC)
    unscoped = TokenInfo("1", "a", Role.ADMIN, None, now)
    scoped = TokenInfo("2", "b", Role.READER, ("beta",), now)
    assert unscoped.covers("production")
    assert scoped.covers("beta") and not scoped.covers("production")
    assert scoped.to_dict()["environments"] == ["beta"]
    assert unscoped.to_dict()["environments"] is None
