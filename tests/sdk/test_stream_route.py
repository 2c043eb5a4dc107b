"""GET /sdk/v1/stream on a real server: snapshot first, changes in order, heartbeats,
Last-Event-ID resume, the stream limit, and a change made on another replica."""

from __future__ import annotations

import json

import pytest

from api.routes.sdk import SdkServerSettings
from flags.testing import wait_for

from .harness import ENV, Deployment, StreamReader


def kill(deployment: Deployment, server: object, key: str = "checkout", what: str = "kill") -> int:
    r = deployment.admin_request(
        server,  # type: ignore[arg-type]
        "POST",
        f"/admin/flags/{key}/{what}",
        json={"reason": "test", "environments": [ENV]},
    )
    assert r.status_code == 200, r.text
    return deployment.store.environment_version(ENV)


def test_stream__snapshot_then_changes__in_version_order(deployment: Deployment) -> None:
    """The first event is the snapshot; each committed change follows as a change event
    whose id is the environment version."""
    deployment.create_flag("checkout")
    server = deployment.server(heartbeat=0.2)
    reader = StreamReader(server.url, deployment.client_token)
    try:
        (snap,) = wait_for(lambda: reader.of("snapshot"), what="the snapshot event")
        start = json.loads(snap.data)["version"]
        assert snap.id == str(start)
        kill(deployment, server)
        kill(deployment, server, what="unkill")
        changes = wait_for(lambda: len(reader.of("change")) >= 2 and reader.of("change"))
        data = [json.loads(e.data) for e in changes]
        assert [d["version"] for d in data] == [start + 1, start + 2]
        assert [e.id for e in changes] == [str(start + 1), str(start + 2)]
        assert set(data[0]) == {"version", "flag", "state"}
        assert data[0]["flag"] == "checkout" and data[0]["state"]["killed"] is True
        assert data[1]["state"]["killed"] is False
        wait_for(lambda: reader.of("heartbeat") and len(reader.of("heartbeat")) >= 2)
    finally:
        reader.close()


def test_stream__last_event_id__resumes_without_snapshot(deployment: Deployment) -> None:
    """A reconnect with Last-Event-ID gets only the changes it missed."""
    deployment.create_flag("checkout")
    server = deployment.server()
    version = deployment.store.environment_version(ENV)
    kill(deployment, server)
    kill(deployment, server, what="unkill")
    reader = StreamReader(server.url, deployment.client_token, **{"Last-Event-ID": str(version)})
    try:
        changes = wait_for(lambda: len(reader.of("change")) >= 2 and reader.of("change"))
        assert [json.loads(e.data)["version"] for e in changes] == [version + 1, version + 2]
        assert reader.of("snapshot") == []
    finally:
        reader.close()


def test_stream__over_the_limit__503_so_sdks_poll(deployment: Deployment) -> None:
    """Past FLAGRAIL_MAX_STREAMS a stream is refused with 503 and Retry-After."""
    server = deployment.server(sdk_settings=SdkServerSettings(max_streams=0))
    reader = StreamReader(server.url, deployment.client_token)
    try:
        wait_for(lambda: reader.status is not None)
        assert reader.status == 503
        assert json.loads(reader.body)["error"]["code"] == "stream_unavailable"
    finally:
        reader.close()


def test_stream__scope__client_of_other_env_forbidden(deployment: Deployment) -> None:
    """A client token scoped to production may not stream staging."""
    server = deployment.server()
    reader = StreamReader(server.url, deployment.client_token, env="staging")
    try:
        wait_for(lambda: reader.status is not None)
        assert reader.status == 403
    finally:
        reader.close()


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "database-poll"])
def test_stream__change_on_replica_1__reaches_streams_of_replica_2(
    deployment: Deployment, with_redis: bool, request: pytest.FixtureRequest
) -> None:
    """Replica 2's streams get a change committed through replica 1: over Redis, and
    without Redis through its poll of the environment versions."""
    deployment.create_flag("checkout")
    kwargs = {}
    if with_redis:
        prefix = request.getfixturevalue("key_prefix")
        kwargs = {
            "redis_url": request.getfixturevalue("redis_url"),
            "sdk_settings": SdkServerSettings(redis_prefix=prefix),
        }
    one = deployment.server(**kwargs)
    two = deployment.server(**kwargs)
    if with_redis:
        wait_for(lambda: one.sdk.subscriber.live and two.sdk.subscriber.live)
    reader = StreamReader(two.url, deployment.client_token)
    try:
        wait_for(lambda: reader.of("snapshot"))
        version = kill(deployment, one)
        (change,) = wait_for(lambda: reader.of("change") or reader.of("snapshot")[1:])
        data = json.loads(change.data)
        assert data["version"] == version
        state = data["state"] if change.event == "change" else data["flags"]["checkout"]
        assert state["killed"] is True
    finally:
        reader.close()
