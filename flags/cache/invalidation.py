"""Invalidation across processes over Redis pub/sub.

``LayeredCache.invalidate(key)`` publishes ``b"k:" + key`` on the cache's
channel; every process's ``InvalidationListener`` hears it and drops the key
from its memory layers. Delivery is at most once, so the design bounds what a
lost message can cost:

* the listener PINGs every ``heartbeat`` seconds and records when it last heard
  anything (``last_heard``). While it has heard nothing for ``down_after``
  seconds the channel counts as down, and the cache serves no memory entry
  older than 1 s (it cannot hear revocations then);
* after every (re)subscription ``on_connect`` runs, so the cache drops whatever
  it may have missed while the channel was down;
* positive entries carry a maximum age regardless.

Unknown message kinds are ignored, so newer releases can add some.

``Invalidator`` is the sending side of a ``LayeredCache`` (delete everywhere,
tombstone, publish, re-delete, retry); ``Generations`` tells a read in flight
that its key was invalidated meanwhile, so it does not store what it loaded.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from flags.errors import CacheError
from flags.redis_url import redis_client
from flags.sync import Backoff

if TYPE_CHECKING:
    from flags.cache import Layer
    from flags.cache.metrics import CacheStats, LayerStats
    from flags.cache.worker import Worker

__all__ = [
    "Generations",
    "InvalidationListener",
    "Invalidator",
    "decode_message",
    "encode_key",
]

log = logging.getLogger("flagrail.cache.invalidation")

KEY_MESSAGE = b"k:"


def encode_key(key: str) -> bytes:
    """The message that invalidates cache key ``key``."""
    return KEY_MESSAGE + key.encode("utf-8", "surrogatepass")


def decode_message(data: bytes) -> str | None:
    """The cache key a message invalidates, or None for a message of another kind."""
    if isinstance(data, bytes) and data.startswith(KEY_MESSAGE):
        return data[len(KEY_MESSAGE) :].decode("utf-8", "surrogatepass")
    return None


class _Silent(Exception):
    """The channel answered nothing for too long: reconnect."""


class InvalidationListener:
    """Subscribes to ``channel`` on the Redis at ``url`` in a daemon thread.

    ``on_message(key)`` runs on that thread for every invalidated key, and
    ``on_connect()`` after every successful (re)subscription; exceptions they
    raise are logged and swallowed. ``start()`` returns at once; ``close()``
    stops the thread. ``is_up()`` and ``last_heard`` are safe to read from any
    thread.
    """

    def __init__(
        self,
        url: str,
        channel: str,
        on_message: Callable[[str], None],
        *,
        on_connect: Callable[[], None] | None = None,
        heartbeat: float = 0.2,
        down_after: float = 0.6,
        connect_timeout: float = 0.5,
    ) -> None:
        self.url = url
        self.channel = channel
        self.on_message = on_message
        self.on_connect = on_connect
        self.heartbeat = heartbeat
        self.down_after = down_after
        self.connect_timeout = connect_timeout
        self.last_heard = -math.inf  # monotonic time of the last message or pong
        self.connects = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_up(self, now: float | None = None) -> bool:
        """True while something was heard on the channel in the last ``down_after`` s."""
        if now is None:
            now = time.monotonic()
        return now - self.last_heard <= self.down_after

    def start(self) -> InvalidationListener:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"flagrail-invalidation:{self.channel}", daemon=True
            )
            self._thread.start()
        return self

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self.last_heard = -math.inf

    def wait_until_up(self, timeout: float) -> bool:
        """Block until the channel is up or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_up():
                return True
            time.sleep(0.005)
        return self.is_up()

    def _run(self) -> None:
        client: Any = None
        backoff = Backoff(0.05, 1.0)
        try:
            while not self._stop.is_set():
                try:
                    if client is None:  # a cluster client connects when it is built
                        client = redis_client(
                            self.url,
                            socket_timeout=max(1.0, self.down_after * 2),
                            socket_connect_timeout=self.connect_timeout,
                            retry=Retry(NoBackoff(), 0),
                            health_check_interval=0,
                        )
                    self._listen(client)
                    backoff.reset()
                except (RedisError, OSError, _Silent) as exc:
                    log.debug("invalidation channel %s down: %r", self.channel, exc)
                self.last_heard = -math.inf
                self._stop.wait(backoff.next())
        finally:
            if client is not None:
                client.close()

    def _listen(self, client: redis.Redis) -> None:
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            deadline = time.monotonic() + self.down_after
            while True:
                msg = pubsub.get_message(timeout=self.heartbeat / 2)
                if msg is not None and msg.get("type") == "subscribe":
                    break
                if time.monotonic() > deadline or self._stop.is_set():
                    raise _Silent("no subscribe confirmation")
            # on_connect first: whoever waits for is_up() must find its effects done.
            if self.on_connect is not None:
                _call(self.on_connect)
            self.connects += 1
            last_ping = self.last_heard = time.monotonic()
            while not self._stop.is_set():
                msg = pubsub.get_message(timeout=self.heartbeat / 2)
                now = time.monotonic()
                if msg is not None:
                    self.last_heard = now
                    if msg.get("type") == "message":
                        key = decode_message(msg.get("data"))
                        if key is not None:
                            _call(self.on_message, key)
                if now - last_ping >= self.heartbeat:
                    pubsub.ping()
                    last_ping = now
                if now - self.last_heard > self.down_after * 2:
                    raise _Silent(f"nothing heard for {now - self.last_heard:.2f}s")
        finally:
            with contextlib.suppress(RedisError, OSError):
                pubsub.close()


def _call(callback: Callable[..., None], *args: object) -> None:
    try:
        callback(*args)
    except Exception:  # the cache's callback: log it, keep the channel alive
        log.exception("invalidation callback %r failed", callback)


class Generations:
    """Invalidation generations: ``gen`` grows with every invalidation this process
    hears of; ``since(key, gen)`` is True when ``key`` (or everything) was
    invalidated after ``gen`` was read. ``layer`` grows whenever a layer goes dead
    (the cache bumps it). ``note`` takes ``lock``, the lock fills hold while they
    check and store, so a fill never lands after a racing invalidation."""

    _MAX_KEYS = 4096

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.gen = 0
        self.layer = 0
        self._floor = 0
        self._keys: dict[str, int] = {}

    def note(self, key: str | None) -> None:
        """Make in-flight reads of ``key`` (of every key, for None) skip their fills."""
        with self.lock:
            self.gen += 1
            if key is None or len(self._keys) >= self._MAX_KEYS:
                self._keys.clear()
                self._floor = self.gen
            else:
                self._keys[key] = self.gen

    def since(self, key: str, gen: int) -> bool:
        return self._keys.get(key, self._floor) > gen


class Invalidator:
    """The sending side of invalidation for one cache (see ``LayeredCache.invalidate``).

    Remote layers are invalidated with their tombstone (``invalidate(key, hold)``)
    whatever their flag; the key is published on ``channel`` through the first
    remote layer on ``channel_url`` (else a client of its own); and 250 ms later
    all of it is done once more. Failures are retried on ``worker`` for
    ``max_age`` seconds. Never raises.
    """

    def __init__(
        self,
        *,
        layers: list[Layer],
        remote: list[bool],
        stats: list[LayerStats],
        generations: Generations,
        worker: Worker,
        metrics: CacheStats,
        channel_url: str | None,
        channel: str,
        hold: float,
        max_age: float,
    ) -> None:
        self.layers = layers
        self.remote = remote
        self.stats = stats
        self.memory = [layer for i, layer in enumerate(layers) if not remote[i]]
        self.generations = generations
        self.worker = worker
        self.metrics = metrics
        self.channel_url = channel_url
        self.channel = channel
        self.hold = hold
        self.max_age = max_age
        self._publisher: redis.Redis | redis.cluster.RedisCluster | None = None
        self._publish_layer: Any = next(
            (
                lay
                for i, lay in enumerate(layers)
                if remote[i] and getattr(lay, "url", None) == channel_url
            ),
            None,
        )

    def invalidate(self, key: str) -> bool:
        """Forget ``key`` everywhere; True when every remote delete and the publish
        succeeded. On a failure, retried in the background. Never raises."""
        self.forget(key)
        ok = self._remote(key)
        if ok:
            self.metrics.invalidations_ok += 1
        else:
            self.metrics.invalidations_failed += 1
            log.warning("invalidation of %r did not reach everything; retrying", key)
            self.worker.submit(self._retry, key, time.monotonic() + self.max_age, delay=0.2)
        self.worker.submit(self._redelete, key, delay=0.25)
        return ok

    def forget(self, key: str) -> None:
        """Drop ``key`` from this process: fills in flight and memory layers (a message
        heard on the channel, or a wrong value found)."""
        self.generations.note(key)
        for memory in self.memory:
            memory.delete(key)

    def forget_all(self) -> None:
        """(Re)subscribed: whatever was published meanwhile is lost, so forget it all."""
        self.generations.note(None)
        for memory in self.memory:
            memory.clear()

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None

    def _remote(self, key: str) -> bool:
        ok = True
        for i, layer in enumerate(self.layers):
            if not self.remote[i]:
                continue
            if not layer.available():  # type: ignore[attr-defined]
                ok = False
                continue
            try:
                invalidate = getattr(layer, "invalidate", None)
                if invalidate is not None:
                    invalidate(key, self.hold)
                else:
                    layer.delete(key)
            except CacheError:
                self.stats[i].errors += 1
                ok = False
        if self.channel_url:
            ok = self._publish(encode_key(key)) and ok
        return ok

    def _publish(self, message: bytes) -> bool:
        layer = self._publish_layer
        try:
            if layer is not None:
                if not layer.available():
                    return False
                layer.publish(self.channel, message)
                return True
            return self._own_publish(message)
        except CacheError:
            return False

    def _own_publish(self, message: bytes) -> bool:
        try:
            if self._publisher is None:  # a cluster client connects when it is built
                self._publisher = redis_client(
                    str(self.channel_url),
                    socket_timeout=0.05,
                    socket_connect_timeout=0.05,
                    retry=Retry(NoBackoff(), 0),
                )
            self._publisher.publish(self.channel, message)
        except (RedisError, OSError):
            return False
        return True

    def _redelete(self, key: str) -> None:
        """Invalidate once more: drops a value a racing reader wrote back or copied."""
        self.forget(key)
        self._remote(key)

    def _retry(self, key: str, deadline: float) -> None:
        if self._remote(key):
            self.metrics.invalidations_ok += 1
            return
        if time.monotonic() < deadline:
            self.worker.submit(self._retry, key, deadline, delay=0.5)
