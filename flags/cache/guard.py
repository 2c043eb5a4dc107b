"""The guard: watches each cache layer and kills its flag when it misbehaves.

Per layer flag, over a sliding ``window`` (seconds, ten buckets), the guard
keeps three rates, each judged only once its denominator holds ``min_samples``:

* corrupt-read rate = reads that failed to decode or verify / remote reads;
* mismatch rate     = verifications and shadow comparisons that disagreed with
                      the layer below / all of them;
* error rate        = failed layer calls / layer calls (calls skipped by an
                      open circuit are not calls: a dead Redis is the breaker's
                      business, a flapping one is the guard's).

On a breach, in the calling thread and before the next cache call, the layer is
bypassed in this process (``on_breach``). Then, off the request path, the guard
asks the admin API to kill the layer's flag in its environment::

    POST {admin_url}/admin/flags/{flag}/kill
    Authorization: Bearer <guard token scoped to the environment>
    X-Flagrail-Actor: guard:<host>:<pid>
    {"reason": "<the measured rates>", "environments": ["<environment>"]}

through ``flags.admin_client.AdminClient``, retried with tenacity on what it raises
as ``ConnectionError`` (transport errors, 429, 5xx). The token should be a ``guard``
token (``flagrail token create --role guard --env E --flags 'auth.cache.*'``): it may
kill and nothing else, and only a guard token may name its actor. One breach sends
at most one kill; a flag the process already sees killed is not killed again, and the
API writes nothing for a flag that is already killed, so a storm of processes
breaching together leaves one kill in the history.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from flags.admin_client import AdminClient
from flags.cache.metrics import GuardStats
from flags.errors import FlagrailError, ValidationError

if TYPE_CHECKING:
    from flags.cache import FlagSource

__all__ = ["Breach", "Guard", "KillResult", "LayerWatch", "Rates"]

log = logging.getLogger("flagrail.cache.guard")

_BUCKETS = 10
# Counter slots of a bucket.
_READS, _CORRUPT, _CALLS, _ERRORS, _VERIFS, _MISMATCHES = range(6)


@dataclass(frozen=True, slots=True)
class Rates:
    """Counts and rates of one layer over the guard's window (rates in 0..1)."""

    reads: int
    corrupt: int
    calls: int
    errors: int
    verifications: int
    mismatches: int

    @property
    def corrupt_rate(self) -> float:
        return self.corrupt / self.reads if self.reads else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0

    @property
    def mismatch_rate(self) -> float:
        return self.mismatches / self.verifications if self.verifications else 0.0

    def describe(self) -> str:
        return (
            f"corrupt_rate={self.corrupt_rate:.3f} ({self.corrupt}/{self.reads} reads), "
            f"mismatch_rate={self.mismatch_rate:.3f} "
            f"({self.mismatches}/{self.verifications} checks), "
            f"error_rate={self.error_rate:.3f} ({self.errors}/{self.calls} calls)"
        )


@dataclass(frozen=True, slots=True)
class Breach:
    """A threshold crossed by one layer flag. ``exceeded`` names the rates over their limit."""

    flag: str
    environment: str
    rates: Rates
    exceeded: tuple[str, ...]
    window: float
    version: int  # the flag state version this process saw at the breach (0 if unknown)

    def reason(self) -> str:
        return (
            f"guard: cache layer {self.flag} breached {', '.join(self.exceeded)} in "
            f"{self.environment} over {self.window:g}s: {self.rates.describe()}"
        )


@dataclass(frozen=True, slots=True)
class KillResult:
    """What became of one kill request: ``outcome`` is killed | already_killed | failed."""

    flag: str
    outcome: str
    status: int | None
    detail: str


class LayerWatch:
    """The sliding window of one layer flag. Thread-safe (one short lock per record).

    The cache reports every remote read (``read``), every layer call
    (``call``), every verification or shadow comparison (``verified``). The
    first breach calls ``on_breach`` in the reporting thread and schedules the
    kill; later records do nothing until ``reset()``.
    """

    def __init__(
        self,
        guard: Guard,
        flag: str,
        flags: FlagSource,
        on_breach: Callable[[Breach], None],
    ) -> None:
        self.guard = guard
        self.flag = flag
        self.flags = flags
        self.on_breach = on_breach
        self.tripped = False
        self._lock = threading.Lock()
        self._width = guard.window / _BUCKETS
        self._ids = [-1] * _BUCKETS
        self._counts = [[0] * 6 for _ in range(_BUCKETS)]
        self._totals = [0] * 6

    def read(self, corrupt: bool = False) -> None:
        """A remote read returned (hit, miss or a rejected entry); also a successful call."""
        if corrupt:
            self._record((_READS, _CORRUPT, _CALLS), check=True)
        else:
            self._record((_READS, _CALLS), check=False)

    def call(self, failed: bool = False) -> None:
        """A layer call other than a read finished (or any call failed)."""
        if failed:
            self._record((_CALLS, _ERRORS), check=True)
        else:
            self._record((_CALLS,), check=False)

    def verified(self, match: bool) -> None:
        """A verification or shadow comparison of this layer's value came out."""
        if match:
            self._record((_VERIFS,), check=False)
        else:
            self._record((_VERIFS, _MISMATCHES), check=True)

    def rates(self) -> Rates:
        with self._lock:
            self._expire(self.guard.clock())
            return Rates(*self._totals)

    def reset(self) -> None:
        """Forget the window and re-arm (after the layer was re-enabled)."""
        with self._lock:
            self._ids = [-1] * _BUCKETS
            self._counts = [[0] * 6 for _ in range(_BUCKETS)]
            self._totals = [0] * 6
            self.tripped = False

    def _expire(self, now: float) -> int:
        bucket = int(now / self._width)
        oldest = bucket - _BUCKETS
        for slot, ident in enumerate(self._ids):
            if ident != -1 and ident <= oldest:
                counts = self._counts[slot]
                for k in range(6):
                    self._totals[k] -= counts[k]
                    counts[k] = 0
                self._ids[slot] = -1
        return bucket

    def _record(self, kinds: tuple[int, ...], *, check: bool) -> None:
        if self.tripped:
            return
        g = self.guard
        with self._lock:
            bucket = self._expire(g.clock())
            slot = bucket % _BUCKETS
            if self._ids[slot] != bucket:
                self._ids[slot] = bucket
            counts, totals = self._counts[slot], self._totals
            for k in kinds:
                counts[k] += 1
                totals[k] += 1
            # A rate can only cross its limit on a bad event, or when its
            # denominator reaches min_samples.
            if not check and g.min_samples not in (totals[_READS], totals[_CALLS], totals[_VERIFS]):
                return
            rates = Rates(*totals)
            exceeded = g.exceeded(rates)
            if not exceeded or self.tripped:
                return
            self.tripped = True
        state = self.flags.state(self.flag)
        breach = Breach(
            self.flag,
            g.environment,
            rates,
            exceeded,
            g.window,
            state.version if state is not None else 0,
        )
        g.breached(self, breach)


class Guard:
    """Thresholds per layer, and the kill request when one is crossed.

    ``admin_url`` is the admin API's base URL; ``token`` an operator token
    scoped to ``environment``. Rates are fractions in 0..1, ``window`` seconds.
    Never raises into a cache call: request failures are logged, counted
    (``flagrail_cache_guard_kills_total{result="failed"}``) and kept in
    ``results``. ``transport`` replaces httpx's network transport (tests).

    Raises ``ValidationError`` at construction for a rate outside 0..1, a
    non-positive window or a negative ``min_samples``.
    """

    def __init__(
        self,
        admin_url: str,
        token: str,
        *,
        environment: str,
        max_corrupt_rate: float = 0.01,
        max_mismatch_rate: float = 0.01,
        max_error_rate: float = 0.5,
        window: float = 10.0,
        min_samples: int = 20,
        timeout: float = 2.0,
        attempts: int = 5,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for label, rate in (
            ("max_corrupt_rate", max_corrupt_rate),
            ("max_mismatch_rate", max_mismatch_rate),
            ("max_error_rate", max_error_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ValidationError(f"{label} must be in 0..1, got {rate!r}", field=label)
        if not window > 0:
            raise ValidationError(
                f"window must be positive seconds, got {window!r}", field="window"
            )
        if type(min_samples) is not int or min_samples < 0:
            raise ValidationError(
                f"min_samples must be a non-negative int, got {min_samples!r}", field="min_samples"
            )
        self.admin_url = admin_url.rstrip("/")
        self.token = token
        self.environment = environment
        self.max_corrupt_rate = max_corrupt_rate
        self.max_mismatch_rate = max_mismatch_rate
        self.max_error_rate = max_error_rate
        self.window = float(window)
        self.min_samples = min_samples
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.clock = clock
        self.actor = f"guard:{socket.gethostname()}:{os.getpid()}"
        self.results: list[KillResult] = []
        self.stats = GuardStats()
        self._transport = transport
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def watch(
        self, flag: str, flags: FlagSource, on_breach: Callable[[Breach], None]
    ) -> LayerWatch:
        """A new window for layer flag ``flag``, read through ``flags``."""
        return LayerWatch(self, flag, flags, on_breach)

    def exceeded(self, rates: Rates) -> tuple[str, ...]:
        """The names of the rates over their limit (each with enough samples)."""
        out = []
        n = self.min_samples
        if rates.reads >= n and rates.corrupt_rate > self.max_corrupt_rate:
            out.append("corrupt_rate")
        if rates.verifications >= n and rates.mismatch_rate > self.max_mismatch_rate:
            out.append("mismatch_rate")
        if rates.calls >= n and rates.error_rate > self.max_error_rate:
            out.append("error_rate")
        return tuple(out)

    def breached(self, watch: LayerWatch, breach: Breach) -> None:
        """Bypass the layer now (in this thread), then request the kill off-thread."""
        self.stats.breach(breach.flag)
        log.error("%s; bypassing the layer and killing its flag", breach.reason())
        try:
            watch.on_breach(breach)
        except Exception:  # the cache's callback; the kill must still go out
            log.exception("on_breach callback for %s failed", breach.flag)
        thread = threading.Thread(
            target=self._kill, args=(watch.flags, breach), name="flagrail-guard-kill", daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every kill request finished; False if ``timeout`` ran out."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in threads)

    def close(self, timeout: float = 5.0) -> None:
        self.wait_idle(timeout)

    def _already_killed(self, flags: FlagSource, flag: str) -> bool:
        state = flags.state(flag)
        return state is not None and state.killed

    def _kill(self, flags: FlagSource, breach: Breach) -> None:
        flag = breach.flag
        if self._already_killed(flags, flag):
            self._done(KillResult(flag, "already_killed", None, "flag already killed"))
            return
        client = AdminClient(
            self.admin_url,
            self.token,
            timeout=self.timeout,
            actor=self.actor,
            transport=self._transport,
        )
        try:
            with client:
                for attempt in Retrying(
                    stop=stop_after_attempt(self.attempts),
                    wait=wait_exponential(multiplier=0.05, max=1.0),
                    retry=retry_if_exception_type(ConnectionError),
                    reraise=True,
                ):
                    with attempt:
                        if self._already_killed(flags, flag):
                            self._done(KillResult(flag, "already_killed", None, "seen killed"))
                            return
                        data = client.kill(self.environment, flag, reason=breach.reason())
            changed = data.get("changed")
            outcome = "killed" if changed and self.environment in changed else "already_killed"
            self._done(KillResult(flag, outcome, 200, str(changed)))
        except FlagrailError as exc:  # refused (403, 404, 422) or out of retries
            self._done(KillResult(flag, "failed", _answer_status(exc), str(exc)[:200]))
        except Exception as exc:  # anything else: the guard must not die with it
            self._done(KillResult(flag, "failed", None, repr(exc)[:200]))

    def _done(self, result: KillResult) -> None:
        self.stats.kill(result.flag, result.outcome)
        if result.outcome == "failed":
            log.error("guard could not kill %s: %s", result.flag, result.detail)
        else:
            log.warning("guard kill of %s: %s", result.flag, result.outcome)
        with self._lock:
            self.results.append(result)


def _answer_status(exc: FlagrailError) -> int | None:
    """The HTTP status of an error answer (``AdminClient`` messages read ``"<status>
    <code>: <message>"``); None when no answer came (the server was unreachable)."""
    head = str(exc).split(" ", 1)[0]
    return int(head) if head.isdigit() and len(head) == 3 else None
