"""The pub/sub invalidation listener on a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from flags.cache import LayeredCache, MemoryLayer, RedisLayer
from flags.cache.invalidation import InvalidationListener, decode_message, encode_key
from flags.testing.client import TestFlagClient
from flags.testing.redis_server import RedisServer

from .support import L1, L2, SECRET, on, wait_until

pytestmark = pytest.mark.redis


class Heard:
    def __init__(self) -> None:
        self.keys: list[str] = []
        self.connects = 0
        self._lock = threading.Lock()

    def message(self, key: str) -> None:
        with self._lock:
            self.keys.append(key)

    def connect(self) -> None:
        self.connects += 1


@pytest.fixture
def heard() -> Heard:
    return Heard()


@pytest.fixture
def listener(redis_url: str, key_prefix: str, heard: Heard) -> Iterator[InvalidationListener]:
    lst = InvalidationListener(
        redis_url, f"{key_prefix}invalidate", heard.message, on_connect=heard.connect
    )
    lst.start()
    yield lst
    lst.close()


def test_message__round_trips_any_key() -> None:
    """Keys with colons and non-ASCII characters survive the message format."""
    for key in ("key-a", "a:b:c", "ключ", ""):
        assert decode_message(encode_key(key)) == key
    assert decode_message(b"x:unknown kind") is None


def test_listener__published_key__heard(
    listener: InvalidationListener, heard: Heard, redis_url: str
) -> None:
    """A published invalidation reaches on_message; unknown kinds are ignored."""
    assert listener.wait_until_up(5)
    assert heard.connects == 1
    client = redis.Redis.from_url(redis_url)
    client.publish(listener.channel, b"z:some future kind")
    client.publish(listener.channel, encode_key("key-a"))
    client.close()
    assert wait_until(lambda: heard.keys == ["key-a"], 2.0)


def test_listener__heartbeat__keeps_it_up(listener: InvalidationListener) -> None:
    """With no traffic, the heartbeat keeps last_heard fresh."""
    assert listener.wait_until_up(5)
    first = listener.last_heard
    assert wait_until(lambda: listener.last_heard > first + listener.heartbeat / 2, 3.0)
    assert listener.is_up()


def test_listener__closed__is_down(listener: InvalidationListener) -> None:
    """A closed listener hears nothing, and says so."""
    assert listener.wait_until_up(5)
    listener.close()
    assert not listener.is_up()


def test_listener__server_restarted__reconnects_and_calls_on_connect(
    redis_server: RedisServer, heard: Heard
) -> None:
    """A dropped connection is noticed, retried, and on_connect runs again."""
    lst = InvalidationListener(redis_server.url, "inv", heard.message, on_connect=heard.connect)
    lst.start()
    try:
        assert lst.wait_until_up(5)
        redis_server.stop()
        assert wait_until(lambda: not lst.is_up(), 3.0)
        redis_server.start()
        assert wait_until(lambda: heard.connects == 2 and lst.is_up(), 5.0)
    finally:
        lst.close()


def test_listener__callback_raises__channel_stays_alive(redis_url: str, key_prefix: str) -> None:
    """A failing callback is logged; the next message is still delivered."""
    got: list[str] = []

    def on_message(key: str) -> None:
        if key == "bad":
            raise RuntimeError("callback bug")
        got.append(key)

    lst = InvalidationListener(redis_url, f"{key_prefix}inv", on_message)
    lst.start()
    try:
        assert lst.wait_until_up(5)
        client = redis.Redis.from_url(redis_url)
        client.publish(lst.channel, encode_key("bad"))
        client.publish(lst.channel, encode_key("good"))
        client.close()
        assert wait_until(lambda: got == ["good"], 2.0)
    finally:
        lst.close()


CHILD = r"""
import json, sys
from flags.cache import LayeredCache, MemoryLayer, RedisLayer
from flags.client import FlagClient

url, prefix, l1, l2 = sys.argv[1], sys.argv[2], sys.argv[3] == "on", sys.argv[4] == "on"
state = lambda on: {"enabled": on, "rollout": 100 if on else 0}
flags = FlagClient.from_snapshot(
    {"environment": "test", "version": 1,
     "flags": {"auth.cache.l1": state(l1), "auth.cache.l2": state(l2)}}
)
data = {"key-a": {"tenant": "acme"}}
cache = LayeredCache(
    "auth.cache",
    [MemoryLayer(), RedisLayer(url, secret=b"test-secret-0123456789abcdef", prefix=prefix)],
    lambda key: data.get(key), flags, verify_share=0.0,
).start(wait=5)
for line in sys.stdin:
    command = line.strip()
    if command == "revoke-in-db":
        data.pop("key-a", None)
        print(json.dumps("ok"), flush=True)
    elif command == "get":
        print(json.dumps(cache.get("key-a")), flush=True)
cache.close()
"""


@pytest.mark.flag_matrix(L1, L2)
def test_invalidate__reaches_another_os_process_within_100ms(
    redis_url: str, key_prefix: str, flag_client: TestFlagClient
) -> None:
    """A key revoked here stops working in a separate process within 100 ms."""
    modes = ["on" if on(flag_client, key) else "off" for key in (L1, L2)]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, redis_url, key_prefix, *modes],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def ask(command: str) -> object:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(command + "\n")
        child.stdin.flush()
        return json.loads(child.stdout.readline())

    data = {"key-a": {"tenant": "acme"}}
    here = LayeredCache(
        "auth.cache",
        [MemoryLayer(), RedisLayer(redis_url, secret=SECRET, prefix=key_prefix)],
        data.get,
        flag_client,
        verify_share=0.0,
    ).start(wait=5)
    try:
        assert ask("get") == {"tenant": "acme"}  # warm in the other process
        assert ask("revoke-in-db") == "ok"
        del data["key-a"]
        started = time.monotonic()
        assert here.invalidate("key-a")
        while ask("get") is not None:
            assert time.monotonic() - started < 0.1, "still served after 100 ms"
    finally:
        here.close()
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
