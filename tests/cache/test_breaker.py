"""The circuit breaker, on a fake clock."""

from __future__ import annotations

from flags.cache.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker__failures_below_threshold__stays_closed() -> None:
    """Two failures of three allowed keep calls flowing."""
    breaker = CircuitBreaker(3, 1.0, clock=Clock())
    breaker.failure()
    breaker.failure()
    assert breaker.allow() and breaker.state is BreakerState.CLOSED


def test_breaker__success__forgets_earlier_failures() -> None:
    """Failures must be consecutive to open the circuit."""
    breaker = CircuitBreaker(3, 1.0, clock=Clock())
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()
    assert breaker.allow()


def test_breaker__threshold_reached__opens_and_rejects() -> None:
    """Three failures in a row open it; calls are refused without trying."""
    clock = Clock()
    breaker = CircuitBreaker(3, 1.0, clock=clock)
    for _ in range(3):
        breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.opened == 1


def test_breaker__after_reset_timeout__lets_exactly_one_probe_through() -> None:
    """Half-open: one caller probes, the others are still refused."""
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    assert not breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


def test_breaker__probe_succeeds__closes() -> None:
    """A good probe closes the circuit for everyone."""
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() and breaker.allow()


def test_breaker__probe_fails__reopens_for_twice_as_long() -> None:
    """A failed probe backs off exponentially, up to the maximum."""
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, max_reset_timeout=3.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.failure()
    clock.now += 1.5
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()
    breaker.failure()
    clock.now += 3.0  # capped at max_reset_timeout, not 4.0
    assert breaker.allow()


def test_breaker__probe_that_never_reports__is_replaced() -> None:
    """A probe whose caller vanished does not keep the circuit half-open forever."""
    clock = Clock()
    breaker = CircuitBreaker(1, 1.0, clock=clock)
    breaker.failure()
    clock.now += 1.0
    assert breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_breaker__reset__closes_at_once() -> None:
    """An operator (or a test) can close the circuit."""
    breaker = CircuitBreaker(1, 60.0, clock=Clock())
    breaker.failure()
    breaker.reset()
    assert breaker.allow()
