"""The evaluation precedence, driven by the JSON cases in tests/cases (ids from file names)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flags.bucketing import assign_bucket
from flags.evaluate import evaluate
from flags.model import Evaluation, FlagState, Reason

CASES = Path(__file__).parent / "cases"


def _checks() -> list[Any]:
    params = []
    for path in sorted(CASES.glob("*.json")):
        case = json.loads(path.read_text(encoding="utf-8"))
        for i, check in enumerate(case["checks"]):
            params.append(pytest.param(case, check, id=f"{path.stem}-{i}"))
    return params


@pytest.mark.parametrize(("case", "check"), _checks())
def test_evaluate__case__matches_expected(case: dict[str, Any], check: dict[str, Any]) -> None:
    """Each case's state, tenant and default give the expected value, reason and version."""
    # When: the case's flag is evaluated (a check may carry its own state)
    raw = check.get("state", case["state"])
    state = None if raw is None else FlagState.from_dict(raw)
    result = evaluate(
        case["flag"],
        state,
        check["tenant"],
        check["default"],
        archived=check.get("archived", False),
    )
    # Then: value, reason and version are those the case names
    expected = check["expected"]
    assert (result.enabled, result.reason.value, result.version) == (
        expected["enabled"],
        expected["reason"],
        expected["version"],
    )
    if "bucket" in check:
        assert assign_bucket(case["flag"], check["tenant"]) == check["bucket"]


def test_cases__every_reason__is_covered() -> None:
    """The case files exercise every reason evaluate() can give."""
    reasons = {
        check["expected"]["reason"]
        for path in CASES.glob("*.json")
        for check in json.loads(path.read_text(encoding="utf-8"))["checks"]
    }
    assert reasons == {
        Reason.KILLED,
        Reason.MISSING,
        Reason.DISABLED,
        Reason.TENANT_OFF,
        Reason.TENANT_ON,
        Reason.ROLLOUT,
        Reason.ERROR,
    }


tenant_ids = st.one_of(st.none(), st.text(max_size=250))
tenant_sets = st.frozensets(st.text(min_size=1, max_size=8), max_size=4)
states = st.one_of(
    st.none(),
    st.builds(
        FlagState,
        enabled=st.booleans(),
        rollout=st.integers(0, 100),
        tenants_on=tenant_sets,
        tenants_off=tenant_sets,
        killed=st.booleans(),
        version=st.integers(0, 10**9),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.from_regex(r"\A[a-z][a-z0-9_.-]{0,20}\Z"),
    state=states,
    tenant=tenant_ids,
    default=st.booleans(),
    archived=st.booleans(),
)
def test_evaluate__any_input__never_raises_and_explains(
    key: str, state: FlagState | None, tenant: str | None, default: bool, archived: bool
) -> None:
    """Any well-typed input gives an Evaluation with a reason; killed always wins."""
    result = evaluate(key, state, tenant, default, archived=archived)
    assert isinstance(result, Evaluation)
    assert isinstance(result.reason, Reason)
    if state is not None and state.killed:
        assert (result.enabled, result.reason) == (False, Reason.KILLED)
    elif state is None or archived:
        assert (result.enabled, result.reason) == (default, Reason.MISSING)
    if result.reason is Reason.ERROR:
        assert result.enabled is default and result.error
