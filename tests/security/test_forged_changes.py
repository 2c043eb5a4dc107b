"""Issue #14, finding 7: whoever can PUBLISH to Redis cannot set flag states.

Change messages on Redis are either signed (``FLAGRAIL_SIGNING_KEY``: unsigned or
wrongly signed messages are dropped and counted) or hints only (no key). In both
modes a real Redis carries forged messages (a future version with a kill, a
far-future version, an unkill, another environment's body, a wrong signature,
garbage) to a real server and a real SDK (``FlagClient`` syncing over Redis);
neither the SDK nor the server's SSE stream changes state, and the next real change
still arrives at the version it really has (a forged version burns nothing).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import redis
from sdk.harness import ENV, Deployment, LiveServer, StreamReader

from api.routes.sdk import SdkServerSettings
from flags import FlagClient
from flags.model import FlagChanged, FlagState, Snapshot
from flags.sync.redis_pubsub import environment_key, sign_change
from flags.testing import wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def deployment(sqlite_url: str) -> Iterator[Deployment]:
    d = Deployment(sqlite_url)
    try:
        yield d
    finally:
        d.close()


def admin(d: Deployment, server: LiveServer, path: str) -> None:
    r = d.admin_request(server, "POST", path, json={"reason": "t", "environments": [ENV]})
    assert r.status_code == 200, r.text


def forged(env_version: int, flag: str, **state: Any) -> bytes:
    event = FlagChanged(ENV, env_version, flag, FlagState(**state))
    return json.dumps(event.to_dict()).encode()


SECRET = "server-side-signing-secret-0123456789"


@pytest.mark.parametrize("signing_key", [None, SECRET], ids=["hint-only", "signed"])
def test_forged_messages__no_state_changes__real_change_still_arrives(
    deployment: Deployment, redis_url: str, key_prefix: str, signing_key: str | None
) -> None:
    """Forged kill/unkill/future/garbage messages change nothing anywhere; the real kill
    that follows is applied at its true version by the SDK and the stream."""
    deployment.create_flag("checkout")
    deployment.create_flag("payments")
    env = {"FLAGRAIL_SIGNING_KEY": signing_key} if signing_key else {}
    with mock.patch.dict(os.environ, env):
        server = deployment.server(
            redis_url=redis_url, sdk_settings=SdkServerSettings(redis_prefix=key_prefix)
        )
    admin(deployment, server, "/admin/flags/payments/kill")
    wait_for(lambda: server.sdk.subscriber.live, what="the server's redis subscription")
    start = deployment.store.environment_version(ENV)
    seen: list[Snapshot] = []
    lock = threading.Lock()
    client = FlagClient(
        server.url, deployment.client_token, ENV, redis_url=redis_url, channel_prefix=key_prefix
    )
    stream = StreamReader(server.url, deployment.client_token)
    r = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: client.stats()["source"] == "redis", what="the SDK on redis")
        wait_for(lambda: client.version == start, what="the SDK at the current version")
        wait_for(lambda: len(stream.of("snapshot")) == 1, what="the stream's snapshot")

        def changed(_c: FlagClient, snapshot: Snapshot) -> None:
            with lock:
                seen.append(snapshot)

        client.on_change(changed)
        source = client._source
        channel = f"{key_prefix}changes:{ENV}"
        messages = [
            forged(start + 1, "checkout", killed=True, version=99),  # the next version
            forged(start + 1000, "checkout", killed=True, version=99),  # far future
            forged(start + 2, "payments", enabled=True, killed=False, version=99),  # unkill
            forged(2**62, "checkout", killed=True, version=99),
            json.dumps({"environment": "other", "version": start + 5}).encode(),
            b"\xff garbage",
            b"[]",
            json.dumps({"environment": ENV, "version": 2**64}).encode(),
            json.dumps({"environment": ENV, "version": True}).encode(),
            # Signed, but with the key of another secret (a guess).
            sign_change(
                FlagChanged(ENV, start + 1, "checkout", FlagState(killed=True, version=99)),
                environment_key(b"not-the-servers-secret", ENV),
            ),
        ]
        broadcaster = server.sdk.broadcaster
        # The server may also hear its own payments kill echoed back by Redis (ignored:
        # not ahead), at any point: so wait for the counts each message must add.
        hints_before = broadcaster.hints
        for message in messages:
            r.publish(channel, message)
        if signing_key is None:
            wait_for(lambda: source.hints + source.unreadable_hints >= 10, what="SDK hints")
            wait_for(
                lambda: (
                    broadcaster.hints - hints_before >= 5
                    and broadcaster.hints_ignored >= 1  # the other environment's
                    and server.sdk.unreadable_hints >= 5
                ),
                what="the server's hints",
            )
            # The wrongly signed one still reads as a hint of start + 1 (a 304).
            assert source.hints == 5 and source.unreadable_hints == 5
            assert broadcaster.hints - hints_before == 5 and server.sdk.unreadable_hints == 5
        else:
            assert source._fetcher.verify_key == environment_key(SECRET.encode(), ENV)
            wait_for(lambda: source.rejected >= 10, what="the SDK's rejections")
            wait_for(lambda: server.sdk.rejected >= 10, what="the server's rejections")
            assert source.hints == 0 and broadcaster.hints == 0

        admin(deployment, server, "/admin/flags/checkout/kill")
        wait_for(lambda: not client.is_enabled("checkout"), what="the real kill at the SDK")
        wait_for(lambda: len(stream.of("change")) >= 1, what="the real kill on the stream")

        assert client.version == start + 1 == deployment.store.environment_version(ENV)
        assert client.is_enabled("payments") is False  # the forged unkill was never applied
        with lock:
            applied = [(s.version, s.flags["checkout"].killed) for s in seen]
        assert applied == [(start + 1, True)]  # nothing but the real change
        changes = [json.loads(e.data) for e in stream.of("change")]
        assert [(c["version"], c["flag"]) for c in changes] == [(start + 1, "checkout")]
        assert len(stream.of("snapshot")) == 1  # no forged state, no resync snapshot
        assert broadcaster.resyncs == 0
    finally:
        stream.close()
        client.close()
        r.close()


def test_flood_of_forged_hints__few_fetches__real_change_still_arrives(
    deployment: Deployment, redis_url: str, key_prefix: str
) -> None:
    """Hint-only: 300 forged future versions cost the SDK a fetch or two (a false hint
    pauses hint-driven fetches for a second), not 300; the real kill still arrives."""
    deployment.create_flag("checkout")
    server = deployment.server(
        redis_url=redis_url, sdk_settings=SdkServerSettings(redis_prefix=key_prefix)
    )
    wait_for(lambda: server.sdk.subscriber.live, what="the server's redis subscription")
    client = FlagClient(
        server.url, deployment.client_token, ENV, redis_url=redis_url, channel_prefix=key_prefix
    )
    r = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: client.stats()["source"] == "redis", what="the SDK on redis")
        start = deployment.store.environment_version(ENV)
        wait_for(lambda: client.version == start, what="the SDK at the current version")
        source = client._source
        channel = f"{key_prefix}changes:{ENV}"
        for i in range(300):
            r.publish(channel, forged(start + 1 + i, "checkout", killed=True, version=99))
        wait_for(lambda: source.hints >= 300, what="the flood heard")
        admin(deployment, server, "/admin/flags/checkout/kill")
        wait_for(lambda: not client.is_enabled("checkout"), what="the real kill at the SDK")
        assert client.version == start + 1
        assert source.hint_fetches <= 4, source.hint_fetches
    finally:
        client.close()
        r.close()
