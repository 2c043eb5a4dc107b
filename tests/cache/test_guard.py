"""The guard: sliding-window thresholds, the local bypass, and one kill via the real admin API."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest
import uvicorn

from api.app import create_app
from flags.cache import Guard, LayeredCache, Mode
from flags.cache.codec import Entry
from flags.cache.guard import Breach, LayerWatch
from flags.errors import ValidationError
from flags.model import FlagKind, FlagState, StateChange
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.testing.client import TestFlagClient
from flags.testing.redis_server import free_port

from .conftest import CacheFactory
from .support import L1, L2, on, wait_until

ENV = "production"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.breaches: list[Breach] = []

    def __call__(self, breach: Breach) -> None:
        self.breaches.append(breach)


def unreachable_guard(clock: Clock | None = None, **kwargs: Any) -> Guard:
    """A guard whose kill requests go nowhere (answered 503 without a network)."""
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    return Guard(
        "http://admin.invalid",
        "token",
        environment=ENV,
        transport=transport,
        attempts=1,
        clock=clock or Clock(),
        **kwargs,
    )


def watch(guard: Guard, recorder: Recorder) -> LayerWatch:
    return guard.watch(L2, TestFlagClient({L2: True}), recorder)


class TestWindow:
    def test_watch__below_min_samples__never_trips(self) -> None:
        """Nineteen mismatches out of nineteen are not yet a verdict."""
        recorder = Recorder()
        w = watch(unreachable_guard(min_samples=20), recorder)
        for _ in range(19):
            w.verified(False)
        assert not w.tripped and not recorder.breaches

    def test_watch__min_samples_reached__trips_once(self) -> None:
        """The twentieth bad check trips it; later records do nothing."""
        recorder = Recorder()
        guard = unreachable_guard(min_samples=20)
        w = watch(guard, recorder)
        for _ in range(25):
            w.verified(False)
        assert w.tripped and len(recorder.breaches) == 1
        breach = recorder.breaches[0]
        assert breach.exceeded == ("mismatch_rate",)
        assert breach.rates.mismatches == breach.rates.verifications == 20
        assert "mismatch_rate=1.000" in breach.reason()
        guard.wait_idle()

    def test_watch__rate_under_threshold__does_not_trip(self) -> None:
        """One corrupt read in two hundred is under a 1% limit (1 in the first 20 is not)."""
        recorder = Recorder()
        w = watch(unreachable_guard(), recorder)
        for _ in range(199):
            w.read()
        w.read(corrupt=True)
        assert w.rates().corrupt_rate == pytest.approx(0.005)
        assert not recorder.breaches

    def test_watch__good_event_reaching_min_samples__trips_on_the_rate(self) -> None:
        """Nineteen errors then one success: 95% errors over 20 calls is a breach."""
        recorder = Recorder()
        guard = unreachable_guard()
        w = watch(guard, recorder)
        for _ in range(19):
            w.call(failed=True)
        w.call()
        assert [b.exceeded for b in recorder.breaches] == [("error_rate",)]
        guard.wait_idle()

    def test_watch__old_events__leave_the_window(self) -> None:
        """Events older than the window no longer count."""
        clock = Clock()
        recorder = Recorder()
        w = watch(unreachable_guard(clock, window=10.0), recorder)
        for _ in range(15):
            w.verified(False)
        clock.now += 11.0
        for _ in range(10):
            w.verified(False)
        assert w.rates().verifications == 10
        assert not recorder.breaches

    def test_watch__reset__re_arms(self) -> None:
        """After a reset (the layer came back) a new breach is reported again."""
        recorder = Recorder()
        guard = unreachable_guard(min_samples=2)
        w = watch(guard, recorder)
        w.verified(False)
        w.verified(False)
        w.reset()
        assert not w.tripped and w.rates().verifications == 0
        w.verified(False)
        w.verified(False)
        assert len(recorder.breaches) == 2
        guard.wait_idle()

    @pytest.mark.parametrize(
        "kwargs",
        [{"max_corrupt_rate": 1.5}, {"max_error_rate": -0.1}, {"window": 0}, {"min_samples": -1}],
    )
    def test_guard__bad_thresholds__raise_validation_error(self, kwargs: dict[str, Any]) -> None:
        """Rates are fractions, the window positive seconds."""
        with pytest.raises(ValidationError):
            Guard("http://x", "t", environment=ENV, **kwargs)


class TestKillRequest:
    def breach(self, guard: Guard, flags: TestFlagClient | None = None) -> None:
        w = guard.watch(L2, flags or TestFlagClient({L2: True}), Recorder())
        for _ in range(guard.min_samples):
            w.verified(False)
        assert guard.wait_idle()

    def test_kill__request__carries_reason_scope_token_and_actor(self) -> None:
        """POST /admin/flags/{flag}/kill with the rates, the environment and guard:<host>:<pid>."""
        seen: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"flag": L2, "environments": {}, "changed": [ENV]})

        guard = Guard(
            "http://admin", "s3cret", environment=ENV, transport=httpx.MockTransport(handler)
        )
        self.breach(guard)
        (request,) = seen
        assert request.url.path == f"/admin/flags/{L2}/kill"
        assert request.headers["authorization"] == "Bearer s3cret"
        assert request.headers["x-flagrail-actor"] == guard.actor
        assert guard.actor.startswith("guard:") and guard.actor.endswith(f":{_pid()}")
        body = json.loads(request.content)
        assert body["environments"] == [ENV] and "mismatch_rate=1.000" in body["reason"]
        assert [r.outcome for r in guard.results] == ["killed"]

    def test_kill__server_errors__retried_until_it_answers(self) -> None:
        """5xx and transport errors are retried with backoff (tenacity)."""
        answers = iter([503, 502, 200])

        def handler(request: httpx.Request) -> httpx.Response:
            status = next(answers)
            body = {"flag": L2, "environments": {}, "changed": [ENV]} if status == 200 else {}
            return httpx.Response(status, json=body)

        guard = Guard("http://a", "t", environment=ENV, transport=httpx.MockTransport(handler))
        self.breach(guard)
        assert [r.outcome for r in guard.results] == ["killed"]

    def test_kill__refused_token__not_retried_and_never_raises(self) -> None:
        """A 403 is final: recorded as failed, nothing raised into the cache."""
        calls: list[int] = []

        def handler(request: httpx.Request) -> httpx.Response:
            calls.append(1)
            return httpx.Response(403, json={"error": {"code": "forbidden"}})

        guard = Guard("http://a", "t", environment=ENV, transport=httpx.MockTransport(handler))
        self.breach(guard)
        assert len(calls) == 1
        assert [(r.outcome, r.status) for r in guard.results] == [("failed", 403)]

    def test_kill__flag_already_killed__sends_nothing(self) -> None:
        """A flag this process already sees killed is not killed again."""
        calls: list[int] = []
        guard = Guard(
            "http://a",
            "t",
            environment=ENV,
            transport=httpx.MockTransport(lambda r: calls.append(1) or httpx.Response(200)),
        )
        flags = TestFlagClient()
        flags.set_state(L2, FlagState(enabled=True, rollout=100, killed=True, version=3))
        self.breach(guard, flags)
        assert not calls and [r.outcome for r in guard.results] == ["already_killed"]

    def test_kill__admin_api_unreachable__failed_after_retries(self) -> None:
        """No server at all: the guard gives up quietly; the bypass still holds."""
        guard = Guard(
            f"http://127.0.0.1:{free_port()}", "t", environment=ENV, attempts=2, timeout=0.5
        )
        self.breach(guard)
        assert [r.outcome for r in guard.results] == ["failed"]


# --------------------------------------------------------------------- the real admin API


class AdminApi(NamedTuple):
    url: str
    token: str  # a guard token: kills, nothing else
    reader: str  # reads the history
    store: SqlFlagStore


@pytest.fixture
def admin_api(sqlite_url: str) -> Iterator[AdminApi]:
    """The admin API in a thread, with a guard and a reader token scoped to production.
    The ``guard`` role may kill and alone may name its actor (``X-Flagrail-Actor``)."""
    store = SqlFlagStore(sqlite_url)
    for key in (L1, L2):
        store.create_flag(key, kind=FlagKind.OPERATIONAL, actor="test")
        store.update_state(key, ENV, StateChange(enabled=True, rollout=100), actor="test")
    _info, token = store.create_token("guard", "guard", [ENV], actor="test")
    _info, reader = store.create_token("history", "reader", [ENV], actor="test")
    port = free_port()
    app = create_app(Settings(database_url=sqlite_url, scheduler=False), store=store)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: server.started, timeout=20)
        yield AdminApi(f"http://127.0.0.1:{port}", token, reader, store)
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def kills(api: AdminApi) -> list[dict[str, Any]]:
    """The kills in L2's history, read with the reader token (a guard token only kills)."""
    response = httpx.get(
        f"{api.url}/admin/flags/{L2}/history", headers={"Authorization": f"Bearer {api.reader}"}
    )
    response.raise_for_status()
    return [item for item in response.json()["items"] if item["action"] == "kill"]


def broken_writes(cache: LayeredCache, keys: list[str]) -> None:
    """A broken writer: well-formed envelopes holding wrong values."""
    layer = cache.layers[1]
    layer.get("warm-up")
    for key in keys:
        layer.set(key, Entry({"tenant": "nobody", "active": False}, time.time()))


def guard_for(url: str, token: str) -> Guard:
    return Guard(url, token, environment=ENV, min_samples=5, window=30.0)


@pytest.mark.redis
@pytest.mark.flag_matrix(L1, L2)
class TestGuardAgainstTheAdminApi:
    def test_guard__shadow_mismatches__bypass_then_exactly_one_kill_with_guard_actor(
        self,
        admin_api: AdminApi,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
    ) -> None:
        """A run of mismatches trips the local bypass and leaves one kill in the history,
        even when a second process breaches too; answers stay right throughout."""
        url, token = admin_api.url, admin_api.token
        layer_flags.set(f"{L2}.shadow", True)
        data = {f"key-{n}": {"tenant": "acme", "n": n, "active": True} for n in range(12)}
        guards = [guard_for(url, token), guard_for(url, token)]
        caches = [make_cache(loader=data.get, guard=g) for g in guards]
        broken_writes(caches[0], list(data))
        for cache in caches:
            for key, value in data.items():
                assert cache.get(key) == value
        for guard in guards:
            assert guard.wait_idle(20)
        history = kills(admin_api)
        if not on(layer_flags, L2):
            assert history == [] and all(g.results == [] for g in guards)
            return
        for cache in caches:
            assert cache.modes()["l2"] is Mode.OFF  # bypassed locally, before the kill lands
        assert len(history) == 1
        (kill,) = history
        assert kill["actor"] == guards[0].actor and kill["environment"] == ENV
        assert "mismatch_rate" in kill["reason"]
        outcomes = sorted(r.outcome for g in guards for r in g.results)
        assert outcomes == ["already_killed", "killed"]

    def test_guard__live_layer_wrong_values__bypassed_before_the_next_call(
        self,
        admin_api: AdminApi,
        make_cache: CacheFactory,
        layer_flags: TestFlagClient,
    ) -> None:
        """Verification catches a live layer serving wrong values; once the guard trips,
        the very next call answers from below, and the flag is killed once."""
        url, token = admin_api.url, admin_api.token
        data = {f"key-{n}": {"tenant": "acme", "n": n, "active": True} for n in range(12)}
        guard = guard_for(url, token)
        cache = make_cache(loader=data.get, guard=guard, verify_share=1.0)
        broken_writes(cache, list(data))
        keys = iter(data)
        tripped = lambda: not on(layer_flags, L2) or cache.modes()["l2"] is Mode.OFF  # noqa: E731
        for key in keys:
            cache.get(key)
            cache.wait_idle()
            if tripped():
                break
        assert tripped()
        for key in keys:  # every remaining call, right after the breach, is answered right
            assert cache.get(key) == data[key]
        assert guard.wait_idle(20)
        assert len(kills(admin_api)) == (1 if on(layer_flags, L2) else 0)


def _pid() -> int:
    return os.getpid()
