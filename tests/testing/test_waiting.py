"""flags.testing.wait_for: poll a condition, never sleep a fixed time."""

from __future__ import annotations

import itertools

import pytest

from flags.testing import wait_for


def test_wait_for__condition_comes_true__returns_its_value() -> None:
    calls = itertools.count(1)
    assert wait_for(lambda: (n := next(calls)) >= 3 and {"after": n}, 5.0) == {"after": 3}


def test_wait_for__never_true__fails_naming_what_it_waited_for() -> None:
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    with pytest.raises(AssertionError, match=r"timed out after 0.05s waiting for the kill"):
        wait_for(never, 0.05, "the kill", interval=0.01)
    assert len(calls) >= 2  # polled, not checked once
