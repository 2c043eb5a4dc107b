"""Helpers shared by the plan tests (a module of its own: conftest is not importable)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

FLAG = "auth.cache.l2"
ENV = "production"
T0 = datetime(2026, 11, 5, 10, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to. Thread-safe."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self._now += timedelta(**delta)
            return self._now


def five_stages(hold: str = "30m", **extra: Any) -> dict[str, Any]:
    """The issue's production rollout: [internal] -> 5% -> 25% -> 50% -> 100%."""
    return {
        "environment": ENV,
        "stages": [
            {"tenants_on": ["internal"], "enabled": True, "hold": hold},
            {"rollout": 5, "hold": hold},
            {"rollout": 25, "hold": hold},
            {"rollout": 50, "hold": hold},
            {"rollout": 100, "hold": hold},
        ],
        "guards": [{"metric": f"{FLAG}.corrupt_rate", "max": 0.01}],
        **extra,
    }
