"""Waiting on a condition in a test, instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_for"]

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    *,
    interval: float = 0.01,
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy,
    and return that. Raises ``AssertionError`` naming ``what`` once ``timeout``
    seconds pass without it (the predicate is always called at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
