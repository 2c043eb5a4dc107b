"""Change events and instance reports over Redis pub/sub (redis-py).

Channels (``prefix`` defaults to ``flagrail:``):

* ``<prefix>changes:<environment>``: one JSON ``FlagChanged`` per committed
  change, published by the server replica that committed it, after the commit.

Redis is not authenticated per message: whoever can PUBLISH to it can write any
message. Two modes keep such a message from setting state:

* **signed** (the server has ``FLAGRAIL_SIGNING_KEY``): a message is
  ``{"environment", "version", "payload", "sig"}``, ``payload`` the change's JSON
  and ``sig`` its HMAC-SHA256 under the environment's verify key
  (``environment_key``: derived from the server's secret, so it opens one
  environment only and never reveals the secret). Replicas derive the key;
  SDKs receive it in the authenticated snapshot response
  (``X-Flagrail-Verify-Key``). A message whose signature does not verify is
  dropped and counted; a verified one is applied as a change (in order).
* **hint-only** (no key): receivers take only "this environment reached version
  N" (``read_hint``) and fetch the state over the authenticated path (an SDK:
  ``GET /sdk/v1/snapshot`` with its ETag; a replica: its database).

Either way a forged message cannot set a state or burn a version number.
Instance reports travel over HTTP only (each is tied to the token that sent it).

Pub/sub is fire-and-forget: a message published while a subscriber is away is
lost to it; receivers resync after every (re)subscribe and poll as a backstop.

``RedisPublisher`` publishes from a background thread, so a dead or hung Redis
never delays, let alone fails, the request that committed a change.
``RedisSubscriber`` is a reconnecting subscriber with a PING health check, so a
hung (paused) Redis is noticed within a few seconds.

Both take every URL form of ``flags.redis_url`` (``redis+sentinel://`` follows a
failover: the subscriber's ping notices the dead master, it reconnects through the
sentinels to the promoted one and its receiver resyncs; the publisher reconnects on
its next message). Their constructors raise ``InvalidRedisUrlError`` for a malformed
URL. Log lines name the URL without its passwords.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from flags.model import FlagChanged
from flags.redis_url import parse_redis_url, redact_redis_url, redis_client
from flags.sync import DEFAULT_PREFIX, Backoff, channel_name

__all__ = [
    "RedisPublisher",
    "RedisSubscriber",
    "decode_change",
    "encode_change",
    "environment_key",
    "read_hint",
    "sign_change",
    "verify_change",
]

log = logging.getLogger("flagrail.sync.redis")

# Seconds: a ping every PING_EVERY; no answer for DEAD_AFTER means the link is dead.
PING_EVERY = 1.0
DEAD_AFTER = 3.0
SOCKET_TIMEOUT = 2.0


def encode_change(event: FlagChanged) -> bytes:
    return json.dumps(event.to_dict(), separators=(",", ":")).encode("utf-8")


def decode_change(data: bytes | str) -> FlagChanged:
    """Parse a change message. Raises ``ValueError`` (``ValidationError`` included)."""
    return FlagChanged.from_dict(json.loads(data))


# Largest version a hint may carry (environment versions are BIGINTs).
MAX_HINT_VERSION = 2**63 - 1
MAX_HINT_BYTES = 64 * 1024


def read_hint(data: bytes | str, environment: str) -> int | None:
    """The version a change message on ``environment``'s channel announces, or None
    when it is not a readable hint: not JSON, not an object, larger than 64 KiB, of
    another environment, or without an integer ``version`` in 0..2**63-1. Nothing
    else in the message is read. Never raises."""
    if len(data) > MAX_HINT_BYTES:
        return None
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("environment") != environment:
        return None
    version = message.get("version")
    if type(version) is not int or not 0 <= version <= MAX_HINT_VERSION:
        return None
    return version


def environment_key(secret: bytes, environment: str) -> bytes:
    """The verify key of ``environment``'s change messages: HMAC-SHA256 of the name
    under the server's secret. Knowing it opens that environment's channel only."""
    return hmac.new(secret, b"flagrail-changes:" + environment.encode(), hashlib.sha256).digest()


def sign_change(event: FlagChanged, key: bytes) -> bytes:
    """A signed change message (see the module docstring) under ``key``."""
    payload = json.dumps(event.to_dict(), separators=(",", ":"))
    sig = hmac.new(key, payload.encode("utf-8"), hashlib.sha256).hexdigest()
    message = {
        "environment": event.environment,
        "version": event.version,
        "payload": payload,
        "sig": sig,
    }
    return json.dumps(message, separators=(",", ":")).encode("utf-8")


def verify_change(data: bytes | str, environment: str, key: bytes) -> FlagChanged | None:
    """The change a signed message carries, or None when it is unsigned, wrongly signed,
    unreadable or of another environment. Never raises."""
    if len(data) > MAX_HINT_BYTES:
        return None
    try:
        message = json.loads(data)
        payload, sig = message["payload"], message["sig"]
        if not isinstance(payload, str) or not isinstance(sig, str):
            return None
        expected = hmac.new(key, payload.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            return None
        event = FlagChanged.from_dict(json.loads(payload))
    except (ValueError, KeyError, TypeError, UnicodeError, RecursionError):
        return None
    return event if event.environment == environment else None


def connect(url: str) -> Any:
    """A client for ``url`` in any form ``flags.redis_url`` takes (one server,
    ``redis+sentinel://``, ``redis+cluster://``), with short timeouts: a sync path must
    notice a dead Redis quickly. On Sentinel every new connection asks the sentinels
    for the current master, so a reconnect after a failover reaches the promoted one.

    Raises ``InvalidRedisUrlError`` for a malformed URL (no I/O for a server or
    Sentinel; a cluster client reads the slot map at once).
    """
    return redis_client(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=1.0,
        health_check_interval=0,
        retry_on_timeout=False,
    )


class RedisPublisher:
    """Publish change events and instance reports from one background thread.

    ``publish_changes`` has the signature of a ``SqlFlagStore`` listener. It only
    enqueues, never blocks and never raises. A failed publish is logged (once per
    outage) and counted in ``failures``; the change is committed regardless and
    receivers catch up by version.
    """

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        max_queue: int = 10_000,
        *,
        signing_secret: bytes | None = None,
    ) -> None:
        parse_redis_url(url)  # a malformed URL fails here, not on the thread
        self.url = url
        self.prefix = prefix
        self.signing_secret = signing_secret
        self.published = 0
        self.failures = 0
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._broken = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="flagrail-redis-publisher", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            thread.join(timeout=SOCKET_TIMEOUT + 1)
        if self._client is not None:
            self._client.close()

    def publish_changes(self, events: Sequence[FlagChanged]) -> None:
        for event in events:
            self._enqueue(channel_name(self.prefix, "changes", event.environment), event)

    def _enqueue(self, channel: str, item: FlagChanged) -> None:
        try:
            if self.signing_secret is not None:
                data = sign_change(item, environment_key(self.signing_secret, item.environment))
            else:
                data = json.dumps(item.to_dict(), separators=(",", ":")).encode("utf-8")
            self._queue.put_nowait((channel, data))
        except queue.Full:
            self.failures += 1
            log.warning("redis publish queue is full; dropping a message on %s", channel)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            channel, data = item
            try:
                if self._client is None:
                    self._client = connect(self.url)
                self._client.publish(channel, data)
                self.published += 1
                if self._broken:
                    log.warning("redis publish works again on %s", redact_redis_url(self.url))
                    self._broken = False
            except Exception as exc:  # the publisher must outlive any error: counted, logged
                self.failures += 1
                if not isinstance(exc, (redis.RedisError, OSError)):
                    log.exception("redis publish on %s failed unexpectedly", channel)
                if not self._broken:
                    log.warning(
                        "redis publish on %s failed (%s); changes stay committed and "
                        "receivers catch up by version",
                        channel,
                        exc,
                    )
                    self._broken = True
                if self._client is not None:
                    self._client.close()
                    self._client = None


MessageHandler = Callable[[str, bytes], None]
StateHandler = Callable[[bool], None]


class RedisSubscriber:
    """A reconnecting subscriber on a background thread.

    ``on_message(channel, data)`` runs on that thread for every message;
    ``on_state(True)`` after each successful (re)subscribe (the receiver should
    resync then) and ``on_state(False)`` when the link is lost. Exceptions from
    the handlers are logged and do not stop the loop. ``channels`` are exact;
    ``patterns`` are glob patterns (PSUBSCRIBE).
    """

    def __init__(
        self,
        url: str,
        on_message: MessageHandler,
        on_state: StateHandler | None = None,
        *,
        channels: Sequence[str] = (),
        patterns: Sequence[str] = (),
        name: str = "flagrail-redis-subscriber",
        backoff: Backoff | None = None,
    ) -> None:
        parse_redis_url(url)  # a malformed URL fails here, not on the thread
        self.url = url
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.on_message = on_message
        self.on_state = on_state
        self.name = name
        self.live = False
        self.connects = 0
        self._backoff = backoff or Backoff(0.1, 5.0)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None

    def start(self) -> None:
        if self._thread is None:
            self._closed.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closed.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _set_live(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        if self.on_state is not None:
            try:
                self.on_state(live)
            except Exception:  # a handler bug must not stop the subscriber
                log.exception("redis state handler failed")

    def _run(self) -> None:
        failed_once = False
        while not self._closed.is_set():
            client = None
            try:
                client = connect(self.url)
                pubsub = client.pubsub()
                if self.channels:
                    pubsub.subscribe(*self.channels)
                if self.patterns:
                    pubsub.psubscribe(*self.patterns)
                self._listen(pubsub)
            except (redis.RedisError, OSError, TimeoutError) as exc:
                self._set_live(False)
                if not failed_once:
                    log.warning(
                        "redis subscription on %s lost: %s; retrying",
                        redact_redis_url(self.url),
                        exc,
                    )
                    failed_once = True
            except Exception:  # the subscriber must outlive anything: logged, reconnects
                self._set_live(False)
                log.exception(
                    "redis subscription on %s failed; reconnecting", redact_redis_url(self.url)
                )
            finally:
                self._set_live(False)
                if client is not None:
                    # Closing a broken connection may fail too: nothing to do about it.
                    with contextlib.suppress(Exception):
                        client.close()
            if not self._closed.is_set():
                self._closed.wait(self._backoff.next())

    def _listen(self, pubsub: Any) -> None:
        expected = len(self.channels) + len(self.patterns)
        confirmed = 0
        deadline = time.monotonic() + DEAD_AFTER
        while confirmed < expected:
            if self._closed.is_set():
                return
            msg = pubsub.get_message(timeout=0.2)
            if msg is not None and msg["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
            elif time.monotonic() > deadline:
                raise TimeoutError("no subscribe confirmation from redis")
        self.connects += 1
        self._backoff.reset()
        self._set_live(True)
        last_pong = last_ping = time.monotonic()
        while not self._closed.is_set():
            msg = pubsub.get_message(timeout=0.25)
            now = time.monotonic()
            if msg is not None:
                last_pong = now  # any traffic proves the link
                kind = msg["type"]
                if kind in ("message", "pmessage"):
                    channel = msg["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode("utf-8", "replace")
                    try:
                        self.on_message(channel, msg["data"])
                    except Exception:  # one bad message or handler bug: keep listening
                        log.exception("redis message handler failed on %s", channel)
            if now - last_ping >= PING_EVERY:
                pubsub.ping()
                last_ping = now
            if now - last_pong > DEAD_AFTER:
                raise TimeoutError(f"redis did not answer a ping for {DEAD_AFTER}s")
