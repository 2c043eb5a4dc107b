"""The SDK's compiled checks agree with the pure evaluation core, and never raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flags.client import FlagClient
from flags.evaluate import evaluate
from flags.model import FlagState, Reason, Snapshot

tenants = st.one_of(
    st.none(),
    st.sampled_from(["acme", "globex", "initech", "", "a" * 201, "tab\there", "ünï", "x\u2028y"]),
    st.text(max_size=12),
)
tenant_sets = st.frozensets(st.sampled_from(["acme", "globex", "initech", "ünï"]), max_size=3)
states = st.builds(
    FlagState,
    enabled=st.booleans(),
    rollout=st.integers(0, 100),
    tenants_on=tenant_sets,
    tenants_off=tenant_sets,
    killed=st.booleans(),
    version=st.integers(0, 1000),
)


@settings(max_examples=400, deadline=None)
@given(state=states, tenant=tenants, default=st.booleans())
def test_compiled__any_state_and_tenant__matches_pure_evaluate(
    state: FlagState, tenant: str | None, default: bool
) -> None:
    """Whatever the state and tenant, the SDK answers exactly what evaluate() answers."""
    client = FlagClient.from_snapshot(Snapshot("production", 1, {"f.x": state}))
    expected = evaluate("f.x", state, tenant, default)
    got = client.evaluate("f.x", tenant, default)
    assert (got.enabled, got.reason, got.version) == (
        expected.enabled,
        expected.reason,
        expected.version,
    )
    assert client.is_enabled("f.x", tenant, default) is expected.enabled


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.text(), max_size=2)),
    tenant=st.one_of(st.text(max_size=20), st.integers(), st.none(), st.lists(st.integers())),
    default=st.one_of(st.booleans(), st.none(), st.integers(), st.text(max_size=3)),
)
def test_is_enabled__any_arguments__never_raises(
    key: object, tenant: object, default: object
) -> None:
    """Garbage in gives a bool out, never an exception."""
    client = FlagClient.from_snapshot(
        Snapshot("production", 1, {"f.x": FlagState(enabled=True, rollout=50)})
    )
    assert isinstance(client.is_enabled(key, tenant, default), bool)  # type: ignore[arg-type]
    assert isinstance(client.evaluate(key, tenant, default).enabled, bool)  # type: ignore[arg-type]


def test_evaluate__no_snapshot_yet__default_with_reason_default() -> None:
    """A client that never received a snapshot answers the caller's default."""
    client = FlagClient(None, None, "production")
    result = client.evaluate("f.x", "acme", default=True)
    assert result.enabled is True and result.reason is Reason.DEFAULT


def test_evaluate__unknown_flag__default_with_reason_missing() -> None:
    client = FlagClient.from_snapshot(Snapshot("production", 1, {}))
    assert client.evaluate("nope", "acme", default=True).reason is Reason.MISSING
    assert client.is_enabled("nope", "acme", default=True) is True
    assert client.is_enabled("nope", "acme") is False


def test_apply_change__version_gap__refused_and_state_kept() -> None:
    """A change that is not the next version is refused: the caller must resync."""
    client = FlagClient.from_snapshot(Snapshot("production", 5, {"f.x": FlagState(enabled=True)}))
    assert not client.apply_change(7, "f.x", FlagState(killed=True), source="stream")
    assert client.version == 5
    assert client.apply_change(6, "f.x", FlagState(killed=True), source="stream")
    assert client.evaluate("f.x", "acme").reason is Reason.KILLED
