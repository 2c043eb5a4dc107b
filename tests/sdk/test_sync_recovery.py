"""The SDK when things go wrong: server down at start (backup, then defaults), a
malformed pub/sub message and a version gap (resync), a server that does not publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from api.routes.sdk import SdkServerSettings
from flags import FlagClient
from flags.model import FlagChanged, FlagState, Reason
from flags.testing import wait_for

from .harness import ENV, Deployment, LiveServer


def kill(d: Deployment, server: LiveServer) -> None:
    r = d.admin_request(
        server, "POST", "/admin/flags/checkout/kill", json={"reason": "t", "environments": [ENV]}
    )
    assert r.status_code == 200, r.text


def test_start__server_down__backup_served_else_defaults(
    deployment: Deployment, tmp_path: Path
) -> None:
    """A client that cannot reach the server serves the last snapshot it wrote, and says
    so; without a backup it answers the caller's defaults."""
    deployment.create_flag("checkout")
    server = deployment.server()
    backup = tmp_path / "flags.json"
    with FlagClient(server.url, deployment.client_token, ENV, backup_path=backup) as first:
        assert first.wait_until_ready(10)
        kill(deployment, server)
        wait_for(lambda: not first.is_enabled("checkout", default=True))
    assert json.loads(backup.read_text())["flags"]["checkout"]["killed"] is True
    url = server.url
    server.stop()

    with FlagClient(url, deployment.client_token, ENV, backup_path=backup) as offline:
        assert offline.wait_until_ready(10)
        assert offline.stats()["source"] == "backup"
        assert offline.evaluate("checkout", default=True).reason is Reason.KILLED
    with FlagClient(url, deployment.client_token, ENV, backup_path=tmp_path / "none") as bare:
        assert not bare.wait_until_ready(0.5)
        assert bare.is_enabled("checkout", default=True) is True
        assert bare.stats()["source"] == "none"


@pytest.fixture
def redis_setup(
    deployment: Deployment, redis_url: str, key_prefix: str
) -> tuple[LiveServer, FlagClient, redis.Redis]:
    deployment.create_flag("checkout")
    server = deployment.server(
        redis_url=redis_url, sdk_settings=SdkServerSettings(redis_prefix=key_prefix)
    )
    client = FlagClient(
        server.url,
        deployment.client_token,
        ENV,
        redis_url=redis_url,
        channel_prefix=key_prefix,
    )
    wait_for(lambda: client.stats()["source"] == "redis" and client.ready, what="redis sync")
    r = redis.Redis.from_url(redis_url)
    yield server, client, r  # type: ignore[misc]
    client.close()
    r.close()


def test_redis__malformed_message__dropped_and_still_in_sync(
    deployment: Deployment, redis_setup: tuple[LiveServer, FlagClient, redis.Redis], key_prefix: str
) -> None:
    """An unreadable pub/sub message is counted and dropped (Redis carries hints only),
    never raised; the next kill still arrives."""
    server, client, r = redis_setup
    channel = f"{key_prefix}changes:{ENV}"
    r.publish(channel, b"\xff not json")
    r.publish(channel, json.dumps({"environment": ENV, "version": "x", "flag": 1}))
    source = client._source
    wait_for(lambda: source.unreadable_hints >= 2, what="two dropped messages")
    assert client.version == deployment.store.environment_version(ENV)
    kill(deployment, server)
    wait_for(lambda: not client.is_enabled("checkout"), what="the kill")


def test_redis__version_gap__resync_from_snapshot(
    deployment: Deployment, redis_setup: tuple[LiveServer, FlagClient, redis.Redis], key_prefix: str
) -> None:
    """A change several versions ahead is a hint, not state: the client refetches the
    snapshot (a 304) and stays at the server's version and state."""
    _server, client, r = redis_setup
    current = client.version
    bogus = FlagChanged(ENV, current + 5, "checkout", FlagState(killed=True, version=99))
    r.publish(f"{key_prefix}changes:{ENV}", json.dumps(bogus.to_dict()))
    wait_for(lambda: client._source.hints >= 1, what="the hint taken up")
    wait_for(lambda: client.stats()["last_update_at"] is not None)
    assert client.version == deployment.store.environment_version(ENV) == current
    assert client.is_enabled("checkout") is True  # the bogus kill was never applied


def test_redis__server_does_not_publish__sdk_stays_on_the_stream(
    deployment: Deployment, redis_url: str, key_prefix: str
) -> None:
    """An SDK given Redis, against a server that publishes nowhere, does not go deaf:
    Redis is not counted live, the stream carries the kill."""
    deployment.create_flag("checkout")
    server = deployment.server()
    with FlagClient(
        server.url, deployment.client_token, ENV, redis_url=redis_url, channel_prefix=key_prefix
    ) as client:
        wait_for(lambda: client.stats()["source"] == "stream", what="the stream")
        kill(deployment, server)
        wait_for(lambda: not client.is_enabled("checkout"), what="the kill")
        assert client.stats()["source"] == "stream"
