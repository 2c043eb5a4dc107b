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

``RedisPublisher`` writes each PUBLISH from the committing thread with one
non-blocking send when it can, else from a background thread, so a dead or hung
Redis never delays, let alone fails, the request that committed a change.
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
import socket
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
    """Publish change events from the committing thread when that cannot block, else
    from one background thread.

    ``publish_changes`` has the signature of a ``SqlFlagStore`` listener (it runs after
    the commit). It never blocks and never raises. Once the thread has published one
    message, it opens a second connection to Redis (the *inline link*; one Redis server
    without TLS only, not Sentinel or Cluster) over which ``publish_changes`` writes the
    PUBLISH itself with one non-blocking ``send``: no thread hand-off, which under the
    GIL can cost the change a few milliseconds. The thread reads the replies. A message
    goes to the thread's queue instead, in order, whenever the link is not open, the
    thread still has queued messages, ``MAX_UNANSWERED`` sends await their reply, or the
    socket would not take the whole command (then the link is shut and the message
    published by the thread: a dead or hung Redis never holds up the committing thread).
    A link whose reply does not come within ``SOCKET_TIMEOUT`` is closed; messages sent
    on it without a reply count as failures (Redis may or may not have published them).

    A failed publish is logged (once per outage) and counted in ``failures``; the change
    is committed regardless and receivers catch up by version. ``published`` counts the
    messages Redis acknowledged, ``inline`` those written by the committing thread.
    """

    def __init__(
        self,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        max_queue: int = 10_000,
        *,
        signing_secret: bytes | None = None,
        inline: bool = True,
    ) -> None:
        parse_redis_url(url)  # a malformed URL fails here, not on the thread
        self.url = url
        self.prefix = prefix
        self.signing_secret = signing_secret
        self.use_inline = inline
        self.published = 0
        self.inline = 0
        self.failures = 0
        # Items: (channel, data) to publish, _Reply for a send on the link, None to stop.
        self._queue: queue.Queue[tuple[str, bytes] | _Reply | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._broken = False
        # Guards the links, their counts and _backlog, and orders sends; never held
        # across blocking I/O.
        self._order = threading.Lock()
        self._link: _InlineLink | None = None
        self._retired: list[_InlineLink] = []  # shut links the thread has yet to close
        self._backlog = 0  # (channel, data) items queued and not yet published

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
        with self._order:
            links = [*self._retired, *([self._link] if self._link is not None else [])]
            self._link, self._retired = None, []
        for link in links:
            link.close()
        if self._client is not None:
            self._client.close()

    def publish_changes(self, events: Sequence[FlagChanged]) -> None:
        for event in events:
            self._enqueue(channel_name(self.prefix, "changes", event.environment), event)

    def _enqueue(self, channel: str, item: FlagChanged) -> None:
        if self.signing_secret is not None:
            data = sign_change(item, environment_key(self.signing_secret, item.environment))
        else:
            data = json.dumps(item.to_dict(), separators=(",", ":")).encode("utf-8")
        with self._order:
            if self._queue.full():  # the thread is far behind (Redis away): drop
                self.failures += 1
                log.warning("redis publish queue is full; dropping a message on %s", channel)
                return
            link = self._link
            if link is not None and self._backlog == 0 and link.unanswered < MAX_UNANSWERED:
                if link.send(channel, data):
                    link.unanswered += 1
                    self.inline += 1
                    self._queue.put_nowait(_Reply(link))
                    return
                self._link = None  # shut by send: the thread closes it
                self._retired.append(link)
            self._backlog += 1
            self._queue.put_nowait((channel, data))

    def _run(self) -> None:
        self._warm()
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, _Reply):
                self._read_reply(item.link)
                continue
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
                self._failed(channel, exc)
                if self._client is not None:
                    self._client.close()
                    self._client = None
            finally:
                with self._order:
                    self._backlog -= 1
            if self._client is not None:
                self._open_link()

    def _warm(self) -> None:
        """On the thread, first: connect and open the inline link before a change needs
        them (a replica's first kill then costs what any other does, not a connect). A
        failure is only logged at debug level: the first publish meets it for real."""
        try:
            client = connect(self.url)
            client.ping()
        except Exception as exc:  # Redis away at start: publishing retries per message
            log.debug("redis publisher could not connect at start: %s", exc)
            return
        self._client = client
        self._open_link()

    def _failed(self, channel: str, exc: Exception) -> None:
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

    def _read_reply(self, link: _InlineLink) -> None:
        """On the thread: the reply to one send on ``link``. A link that fails is shut;
        every send on it left without a reply counts as a failure."""
        try:
            if link.shut:
                raise ConnectionError("inline link shut")
            link.read_reply()
        except Exception as exc:  # any error ends the link: counted, logged
            with self._order:
                link.unanswered -= 1
                if self._link is link:
                    self._link = None
                    self._retired.append(link)
                link.shut = True
            self._failed(link.last_channel, exc)
        else:
            self.published += 1
            with self._order:
                link.unanswered -= 1
        self._close_retired()

    def _close_retired(self) -> None:
        """On the thread: close the shut links no reply is awaited on any more."""
        with self._order:
            done = [link for link in self._retired if link.unanswered == 0]
            self._retired = [link for link in self._retired if link.unanswered > 0]
        for link in done:
            link.close()

    def _open_link(self) -> None:
        """On the thread, after a publish went through: open the inline link if there
        is none (and the URL allows one). A failure leaves the thread's path alone."""
        self._close_retired()
        if not self.use_inline or self._link is not None or self._client is None:
            return
        try:
            link = _InlineLink.open(self._client)
        except Exception as exc:  # no inline link this time; the thread publishes
            log.debug("no inline redis publish link: %s", exc)
            return
        if link is None:
            self.use_inline = False  # not a plain single-server connection: never
            return
        with self._order:
            self._link = link


# Sends on the inline link that may await their reply before messages go to the thread.
MAX_UNANSWERED = 64


class _Reply:
    """A queue item: read the reply to one send on ``link``."""

    __slots__ = ("link",)

    def __init__(self, link: _InlineLink) -> None:
        self.link = link


class _InlineLink:
    """One connection to a single Redis server, written by ``send`` (non-blocking, from
    any thread, under the publisher's order lock) and read by ``read_reply`` (the
    publisher's thread, with the connection's socket timeout)."""

    def __init__(self, conn: Any, tx: socket.socket) -> None:
        self.conn = conn
        self.tx = tx
        # Under the publisher's order lock: sends awaiting their reply, and whether the
        # link is shut (no more sends; replies still awaited count as failures).
        self.unanswered = 0
        self.shut = False
        self.last_channel = ""

    @classmethod
    def open(cls, client: Any) -> _InlineLink | None:
        """A connected link from ``client``'s pool settings; None when the connection
        is not a plain TCP or Unix socket one (TLS, Sentinel, Cluster). Raises what the
        connect raises."""
        pool = getattr(client, "connection_pool", None)
        if pool is None or pool.connection_class not in (
            redis.Connection,
            redis.UnixDomainSocketConnection,
        ):
            return None
        conn = pool.make_connection()
        conn.connect()
        sock = getattr(conn, "_sock", None)  # redis-py has no public accessor
        if type(sock) is not socket.socket:
            conn.disconnect()
            return None
        tx = sock.dup()  # a descriptor of its own, with timeout 0: send never waits
        tx.setblocking(False)
        return cls(conn, tx)

    def send(self, channel: str, data: bytes) -> bool:
        """Write one PUBLISH without waiting. True if the socket took all of it; else
        the link is shut (Redis drops a partial command) and False."""
        packed = b"".join(self.conn.pack_command("PUBLISH", channel, data))
        try:
            sent = self.tx.send(packed)
        except OSError:  # BlockingIOError included: nothing of it was sent
            sent = -1
        if sent == len(packed):
            self.last_channel = channel
            return True
        self.shut = True
        with contextlib.suppress(OSError):
            self.tx.shutdown(socket.SHUT_RDWR)
        return False

    def read_reply(self) -> None:
        """Read one reply. Raises a ``RedisError`` / ``OSError`` (timeout included)."""
        reply = self.conn.read_response()
        if isinstance(reply, redis.ResponseError):
            raise reply

    def close(self) -> None:
        self.shut = True
        with contextlib.suppress(OSError):
            self.tx.close()
        with contextlib.suppress(Exception):  # closing a broken connection may fail too
            self.conn.disconnect()


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
