"""The delivery worker: fans the outbox out, claims due deliveries, sends them
signed, and records what happened.

``DeliveryWorker`` is a service with ``start()`` / ``close()`` (``create_app``
runs it); ``run_once()`` does one pass and may be called directly. A pass sends
each claimed delivery on its own thread, so one slow receiver (at most
``timeout`` seconds) never holds up another subscription; a subscription's own
deliveries go one at a time, in ``sequence`` order (see ``api.webhooks.store``).

Retry policy (``retry_delay``): exponential from ``backoff_base`` doubling per
attempt, capped at ``backoff_cap``, with "equal jitter" (a uniform draw in the
upper half); a delivery that has not succeeded within ``retry_window`` of being
made is marked ``failed``. A 2xx answer is success; anything else (another
status, a timeout, a refused connection) is an attempt that failed.

The loop survives any exception: it logs it with its traceback, counts it and
tries again, after a pause that doubles from ``idle_interval`` per failed pass in a
row, up to ``ERROR_PAUSE_CAP`` seconds.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx

from api.webhooks import metrics
from api.webhooks.signing import signed_headers
from api.webhooks.store import Claim, Outcome, Status, WebhookStore

__all__ = ["DeliveryWorker", "WorkerSettings", "retry_delay"]

log = logging.getLogger(__name__)

# Seconds, at most, between passes after passes that raised (the database is down).
ERROR_PAUSE_CAP = 5.0
# Seconds between idle passes while no subscription exists.
UNSUBSCRIBED_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How the worker paces itself. Defaults are the issue's contract: 5 s timeouts,
    exponential backoff with jitter for up to 24 h."""

    timeout: float = 5.0
    backoff_base: float = 1.0
    backoff_cap: float = 3600.0
    retry_window: timedelta = timedelta(hours=24)
    # A claim is good for this long; a worker that died mid-send loses it after.
    lease: timedelta = timedelta(seconds=30)
    # Seconds between passes when there was nothing to do.
    idle_interval: float = 0.05
    # Seconds from a change's wake to the pass that sends it.
    settle: float = 0.02
    # Subscriptions claimed per pass, and deliveries per subscription sent in one run.
    batch: int = 32
    run_length: int = 50
    concurrency: int = 8


def retry_delay(
    attempts: int, *, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...):
    ``min(cap, base * 2 ** (attempts - 1))`` scaled by a uniform factor in [0.5, 1).
    Never more than ``cap``, never less than half the exponential step."""
    step = min(cap, base * (2 ** min(max(attempts - 1, 0), 62)))
    return step * (0.5 + rand() / 2)


def _owner() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{id(object()) & 0xFFFF:x}"


class DeliveryWorker:
    """Delivers webhooks from one ``WebhookStore``. Constructing it does no I/O;
    ``start()`` starts a daemon thread, ``close()`` stops it and waits.
    ``transport`` replaces httpx's network transport (tests)."""

    def __init__(
        self,
        store: WebhookStore,
        settings: WorkerSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or WorkerSettings()
        self.owner = owner or _owner()
        self._transport = transport
        self._client: httpx.Client | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._depth_at = 0.0
        # Whether any subscription existed when last looked (at most once a second, in
        # idle passes): while none does, a committed change does not wake the worker,
        # so a deployment without webhooks adds no work beside its kill path.
        self._subscribed = True
        self._subscribed_at = 0.0

    # ------------------------------------------------------------ service
    def start(self) -> None:
        """Start delivering in a daemon thread. Idempotent."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="webhook-worker", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (after its current pass) and close the HTTP client."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout + 5)
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def wake(self) -> None:
        """Run the next pass now."""
        self._wake.set()

    def subscription_added(self) -> None:
        """A subscription was just created through this process: changes wake the
        worker again from now on (other replicas learn it within a second)."""
        self._subscribed = True
        self._wake.set()

    def wake_for_change(self) -> None:
        """A flag change was just committed: run the next pass now if a subscription
        may receive it (else the idle poll finds any outbox row: within
        ``idle_interval``, or ``UNSUBSCRIBED_INTERVAL`` while no subscription was seen,
        as it does for changes committed by other replicas)."""
        if self._subscribed:
            self._wake.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            busy = False
            pause = self.settings.idle_interval
            try:
                busy = self.run_once()
                failures = 0
            except Exception:  # the loop must outlive any failure: log, count, retry
                failures += 1
                log.exception("webhook worker pass failed (%d in a row)", failures)
                metrics.WORKER_ERRORS.inc()
                # A database that is down is not hammered: back off to ERROR_PAUSE_CAP.
                pause = min(ERROR_PAUSE_CAP, self.settings.idle_interval * 2**failures)
            if not busy:
                if not self._subscribed:
                    # Nothing can be queued while no subscription exists: look once a
                    # second (a new one is found within that; its first change waits
                    # at most as long).
                    pause = max(pause, UNSUBSCRIBED_INTERVAL)
                if self._wake.wait(pause) and not self._stop.is_set():
                    # Woken by a commit: let the request that made it answer first
                    # (its caller is waiting; the receiver can wait ``settle``), and
                    # take a burst of changes in one pass.
                    self._stop.wait(self.settings.settle)
                self._wake.clear()

    # ------------------------------------------------------------ one pass
    def run_once(self, now: datetime | None = None) -> bool:
        """Fan out the outbox, then claim and send due deliveries. Returns whether it
        found any work (the loop then goes again at once)."""
        fanned = self.store.fan_out(now=now)
        # The lease runs from the claim; a run stops sending while it can still finish
        # an attempt inside it, so no other worker ever takes over a live send.
        deadline = time.monotonic() + self.settings.lease.total_seconds() - self.settings.timeout
        claims = self.store.claim(
            self.owner,
            lease=self.settings.lease,
            limit=self.settings.batch,
            run_length=self.settings.run_length,
            now=now,
        )
        if claims:
            runs: dict[str, list[Claim]] = {}
            for claim in claims:
                runs.setdefault(claim.subscription_id, []).append(claim)
            if len(runs) == 1:
                self.deliver_run(claims, deadline=deadline)
            else:
                send = functools.partial(self.deliver_run, deadline=deadline)
                list(self._executor().map(send, runs.values()))
        self._sample_depth()
        if fanned:
            self._subscribed = True
        elif not claims and time.monotonic() - self._subscribed_at >= UNSUBSCRIBED_INTERVAL:
            self._subscribed_at = time.monotonic()
            self._subscribed = self.store.any_subscription()
        return bool(fanned or claims)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.concurrency, thread_name_prefix="webhook-send"
            )
        return self._pool

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                timeout=self.settings.timeout,
                transport=self._transport,
                follow_redirects=False,
                headers={"user-agent": "flagrail-webhooks/1"},
            )
        return self._client

    def _sample_depth(self) -> None:
        if time.monotonic() - self._depth_at >= 1.0:
            self._depth_at = time.monotonic()
            metrics.OUTBOX_DEPTH.set(self.store.depth())

    def deliver_run(self, run: list[Claim], *, deadline: float | None = None) -> int:
        """Send one subscription's claimed deliveries in order, stopping at the first
        that fails or once ``time.monotonic()`` passes ``deadline`` (the lease's end
        less one timeout: the rest are given back unattempted), and record the
        outcomes in one transaction. Returns how many were delivered."""
        outcomes: list[Outcome] = []
        for claim in run:
            if deadline is not None and time.monotonic() > deadline:
                break
            outcome = self.attempt(claim)
            outcomes.append(outcome)
            if outcome.status != Status.DELIVERED:
                break
        kept = self.store.record_all(self.owner, outcomes, release=run[len(outcomes) :])
        delivered = 0
        for outcome in outcomes:
            if outcome.status == Status.DELIVERED:
                delivered += 1
                lag = (datetime.now(UTC) - outcome.claim.event_at).total_seconds()
                metrics.LAG.observe(max(0.0, lag))
            result = _RESULTS[outcome.status] if kept == len(outcomes) else "lease_lost"
            metrics.DELIVERIES.labels(result=result).inc()
        return delivered

    def attempt(self, claim: Claim) -> Outcome:
        """One signed POST of ``claim`` and what it came to (nothing recorded yet)."""
        body = claim.body.encode()
        headers = {
            **signed_headers(claim.secret, claim.msg_id, body),
            "content-type": "application/json",
        }
        code: int | None = None
        text: str | None = None
        error: str | None = None
        try:
            response = self._http().post(claim.url, content=body, headers=headers)
            code = response.status_code
            text = response.content[:1024].decode("utf-8", "replace")
            if not 200 <= code < 300:
                error = f"HTTP {code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        now = datetime.now(UTC)
        next_at: datetime | None = None
        if error is None:
            status = Status.DELIVERED
        elif now - claim.created_at >= self.settings.retry_window:
            status = Status.FAILED
        else:
            status = Status.PENDING
            delay = retry_delay(
                claim.attempts + 1, base=self.settings.backoff_base, cap=self.settings.backoff_cap
            )
            next_at = min(
                now + timedelta(seconds=delay), claim.created_at + self.settings.retry_window
            )
        return Outcome(claim, status, code, error, text, next_at)


_RESULTS = {Status.DELIVERED: "delivered", Status.PENDING: "retry", Status.FAILED: "failed"}
