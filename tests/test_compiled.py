"""The SDK's compiled checks are the evaluation rule: evaluate() and every client agree with
the precedence table (an oracle written out here), and never raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flags.bucketing import assign_bucket
from flags.client import FlagClient
from flags.evaluate import evaluate
from flags.model import Evaluation, FlagState, Reason, Snapshot, is_valid_tenant

TENANT_POOL = ["acme", "globex", "initech", "ünï", "tenant-7", "tenant-42"]
tenants = st.one_of(
    st.none(),
    st.sampled_from([*TENANT_POOL, "", "a" * 201, "a" * 200, "tab\there", "x\u2028y", "\x85"]),
    st.text(max_size=12),
)
tenant_sets = st.frozensets(st.sampled_from(TENANT_POOL), max_size=4)
rollouts = st.one_of(st.sampled_from([0, 1, 50, 99, 100]), st.integers(0, 100))
flag_keys = st.from_regex(r"[a-z][a-z0-9_.-]{0,20}", fullmatch=True)
states = st.builds(
    FlagState,
    enabled=st.booleans(),
    rollout=rollouts,
    tenants_on=tenant_sets,
    tenants_off=tenant_sets,
    killed=st.booleans(),
    version=st.integers(0, 1000),
)


def reference(
    key: str, state: FlagState | None, tenant: object, default: bool, archived: bool = False
) -> tuple[bool, Reason, int]:
    """The precedence table of flags.evaluate, written out plainly: the test's oracle."""
    if state is not None and state.killed:
        return False, Reason.KILLED, state.version
    if state is None or archived:
        return default, Reason.MISSING, state.version if state else 0
    if not state.enabled:
        return False, Reason.DISABLED, state.version
    if tenant is None or tenant == "":  # "" is no tenant
        return state.rollout >= 100, Reason.ROLLOUT, state.version
    if not is_valid_tenant(tenant):
        return default, Reason.ERROR, state.version
    assert isinstance(tenant, str)
    if tenant in state.tenants_off:
        return False, Reason.TENANT_OFF, state.version
    if tenant in state.tenants_on:
        return True, Reason.TENANT_ON, state.version
    return assign_bucket(key, tenant) <= state.rollout, Reason.ROLLOUT, state.version


def triple(ev: Evaluation) -> tuple[bool, Reason, int]:
    return ev.enabled, ev.reason, ev.version


@settings(max_examples=600, deadline=None)
@given(
    key=flag_keys,
    state=st.one_of(st.none(), states),
    tenant=tenants,
    default=st.booleans(),
    archived=st.booleans(),
)
def test_evaluate__any_state_and_tenant__the_precedence_table(
    key: str, state: FlagState | None, tenant: str | None, default: bool, archived: bool
) -> None:
    """evaluate() answers what the module's precedence table says, reason and version."""
    expected = reference(key, state, tenant, default, archived)
    assert triple(evaluate(key, state, tenant, default, archived=archived)) == expected


@settings(max_examples=600, deadline=None)
@given(
    flags=st.dictionaries(flag_keys, states, min_size=1, max_size=4),
    tenant=tenants,
    default=st.booleans(),
    data=st.data(),
)
def test_compiled__any_states_and_tenant__client_agrees_with_evaluate(
    flags: dict[str, FlagState], tenant: str | None, default: bool, data: st.DataObject
) -> None:
    """Whatever the states and tenant, a client's evaluate and is_enabled answer exactly
    what evaluate() answers, for a whole snapshot and after a one-flag change."""
    client = FlagClient.from_snapshot(Snapshot("production", 1, flags))
    changed_key = data.draw(st.sampled_from(sorted(flags)))
    changed = data.draw(st.one_of(st.none(), states))
    for key, state in [*flags.items(), ("never-defined", None)]:
        expected = evaluate(key, state, tenant, default)
        assert triple(client.evaluate(key, tenant, default)) == triple(expected)
        assert client.is_enabled(key, tenant, default) is expected.enabled
    assert client.apply_change(2, changed_key, changed, source="test")
    expected = evaluate(changed_key, changed, tenant, default)
    assert triple(client.evaluate(changed_key, tenant, default)) == triple(expected)
    assert client.is_enabled(changed_key, tenant, default) is expected.enabled


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
