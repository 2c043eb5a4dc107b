"""value()'s fast path for a typed flag on for every tenant: its precomputed table and its
bounded tenant memo (flags.compiled.Refinement) answer what evaluate() answers.

The memo must never change an answer (first call or repeat, within or past its bounds,
across a change of the split), must count what it serves exactly as evaluate does,
and must stay within MEMO_PER_FLAG per flag and MEMO_PER_PROCESS over the process,
giving its room back when the state version holding it is freed.
"""

from __future__ import annotations

import gc
import itertools
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flags import compiled
from flags.client import FlagClient
from flags.counts import variant_counts
from flags.evaluate import evaluate
from flags.model import FlagState, FlagType, Reason, Snapshot, Variant

from .strategies import TENANTS, typed_states

_KEYS = itertools.count()


def unique_key() -> str:
    """A flag key no other test uses, so process-wide variant counts isolate it."""
    return f"memo.flag-{next(_KEYS)}"


def tier_state(split: tuple[tuple[str, int], ...], **extra: Any) -> FlagState:
    fields: dict[str, Any] = {
        "enabled": True,
        "rollout": 100,
        "version": 3,
        "type": FlagType.STRING,
        "variants": tuple(Variant(n, n.upper()) for n in ("gold", "silver", "bronze", "safe")),
        "off_variant": "safe",
        "on_variant": "bronze",
        "split": split,
    }
    fields.update(extra)
    return FlagState(**fields).check_variants()


THREE_WAY = (("gold", 200), ("silver", 300), ("bronze", 500))


def memo_size(client: FlagClient, key: str) -> int:
    """Tenants memoized (pins excluded) by ``key``'s current state version."""
    refine = client._table[key].refine
    assert refine is not None and refine.open
    return len(refine.index) - len(refine.pins)


@st.composite
def open_states(draw: st.DrawFn) -> FlagState:
    """Typed states on for every valid tenant: the ones value()'s fast path answers."""
    state = draw(typed_states())
    fields = {f: getattr(state, f) for f in state.__dataclass_fields__}
    fields.update(enabled=True, killed=False, rollout=100, tenants_off=frozenset())
    return FlagState(**fields).check_variants()


@settings(max_examples=200, deadline=None)
@given(state=open_states(), tenants=st.lists(TENANTS, max_size=30))
def test_value__open_flag__agrees_with_evaluate_and_counts_alike(
    state: FlagState, tenants: list[str]
) -> None:
    """Every call (first placement and memo hits alike) answers evaluate()'s value, and
    the variant counters record exactly the variants evaluate() says were served."""
    key = unique_key()
    client = FlagClient.from_snapshot(Snapshot("production", 1, {key: state}))
    expected: Counter[str] = Counter()
    for tenant in tenants + tenants:
        ev = evaluate(key, state, tenant)
        assert ev.enabled and ev.reason is not Reason.ERROR
        assert client.value(key, None, tenant) == ev.value
        expected[ev.variant] += 1  # type: ignore[index]
    served = {name: n for name, n in variant_counts()[key].items() if n}
    assert served == dict(expected)
    assert client.counts().get(key, (0, 0)) == (0, 2 * len(tenants))


def test_value__pinned_tenant__pin_wins_over_memo_and_split() -> None:
    key = unique_key()
    state = tier_state(THREE_WAY, tenant_variants=(("acme", "safe"),))
    client = FlagClient.from_snapshot(Snapshot("production", 1, {key: state}))
    for _ in range(3):
        assert client.value(key, "dflt", "acme") == "SAFE"


def test_value__invalid_tenants__default_and_error_even_beside_memo() -> None:
    """The memo is looked up only for an exact str and filled only by valid tenants."""

    class Sub(str):
        pass

    key = unique_key()
    client = FlagClient.from_snapshot(Snapshot("production", 1, {key: tier_state(THREE_WAY)}))
    valid = client.value(key, "dflt", "tenant-1")
    assert valid in ("GOLD", "SILVER", "BRONZE")
    errors = client.stats()["errors"]
    for bad in ("x" * 201, "bad\ntenant", Sub("tenant-1"), 42):
        assert client.value(key, "dflt", bad) == "dflt"  # type: ignore[arg-type]
    assert client.stats()["errors"] == errors + 4
    assert memo_size(client, key) == 1
    # No tenant and "" (no tenant) serve the on_variant, as evaluate does.
    assert client.value(key, "dflt", None) == client.value(key, "dflt", "") == "BRONZE"


def test_value__split_changes__memoized_tenants_follow_new_split() -> None:
    """A change compiles a new state version: a memo never serves the previous split."""
    key = unique_key()
    tenants = [f"tenant-{i:04d}" for i in range(500)]
    client = FlagClient.from_snapshot(Snapshot("production", 1, {key: tier_state(THREE_WAY)}))
    before = [client.value(key, "dflt", t) for t in tenants]
    assert set(before) == {"GOLD", "SILVER", "BRONZE"}
    new = tier_state((("gold", 1000), ("silver", 0), ("bronze", 0)), version=4)
    assert client.apply_change(2, key, new, source="test")
    assert [client.value(key, "dflt", t) for t in tenants] == ["GOLD"] * len(tenants)
    killed = tier_state(THREE_WAY, version=5, killed=True)
    assert client.apply_change(3, key, killed, source="test")
    assert {client.value(key, "dflt", t) for t in tenants} == {"SAFE"}


def test_memo__per_flag_bound__past_it_answers_unchanged() -> None:
    key = unique_key()
    state = tier_state(THREE_WAY)
    client = FlagClient.from_snapshot(Snapshot("production", 1, {key: state}))
    tenants = [f"t-{i:06d}" for i in range(compiled.MEMO_PER_FLAG + 300)]
    for t in tenants:
        client.value(key, "dflt", t)
    assert memo_size(client, key) == compiled.MEMO_PER_FLAG
    for t in tenants[-300:] + tenants[:50]:
        assert client.value(key, "dflt", t) == evaluate(key, state, t).value


def test_memo__process_bound__shared_and_given_back() -> None:
    """Clients together memoize at most the process's room; freeing their state
    versions gives it back."""
    gc.collect()
    room = compiled._MEMO_ROOM[0]
    assert 0 < room <= compiled.MEMO_PER_PROCESS
    state = tier_state(THREE_WAY)
    tenants = [f"p-{i:06d}" for i in range(compiled.MEMO_PER_FLAG)]
    clients = []
    for _ in range(room // compiled.MEMO_PER_FLAG + 2):
        key = unique_key()
        client = FlagClient.from_snapshot(Snapshot("production", 1, {key: state}))
        for t in tenants:
            client.value(key, "dflt", t)
        clients.append((client, key))
    assert sum(memo_size(c, k) for c, k in clients) == room
    assert compiled._MEMO_ROOM[0] == 0
    last, last_key = clients[-1]
    assert memo_size(last, last_key) == 0
    for t in tenants[:200]:
        assert last.value(last_key, "dflt", t) == evaluate(last_key, state, t).value
    del clients, last, client
    gc.collect()
    assert compiled._MEMO_ROOM[0] == room


def test_value__undeclared_variant__general_path_default() -> None:
    """A state built without validation whose on_variant is not declared: value() keeps
    the general path's answer (the default), the fast table stays closed."""
    key = unique_key()
    state = FlagState(
        enabled=True,
        rollout=100,
        type=FlagType.STRING,
        variants=(Variant("gold", "GOLD"),),
        off_variant="gold",
        on_variant="ghost",
        split=(),
        tenant_variants=(("acme", "gold"),),
    )
    client = FlagClient.from_snapshot(Snapshot("production", 1, {key: state}))
    refine = client._table[key].refine
    assert refine is not None and not refine.open
    assert client.value(key, "dflt", "acme") == "GOLD"
    assert client.value(key, "dflt", "globex") == "dflt"
