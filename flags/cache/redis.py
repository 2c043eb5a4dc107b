"""The Redis layer: verified envelopes in Redis, behind a circuit breaker.

Storage keys, for a layer named ``l2`` of cache ``auth.cache`` with the default
prefix::

    flagrail:cache:auth.cache:l2:v:{<cache key>} envelope (flags.cache.codec), SET ... PX ttl
    flagrail:cache:auth.cache:l2:t:{<cache key>} tombstone of a recent invalidation
    flagrail:cache:auth.cache:l2:epoch           hash: n = current epoch, m:<marker> = bumps done
    flagrail:cache:auth.cache:invalidate         pub/sub channel (flags.cache.invalidation)

**Redis Cluster.** ``url`` may be any form ``flags.redis_url`` reads (a server,
``redis+sentinel://``, ``redis+cluster://``). An entry and its tombstone share the
hash tag ``{<cache key>}``, so the scripts that touch both (write, invalidate) touch
one slot, and entries spread over the cluster's masters; the epoch hash is a key of
its own, touched alone. The prefix, cache and layer names hold no braces (a brace
there would move the tag). Sentinel and Cluster layers read through their client
(the kept-connection reader is for a single server).

**Epochs.** Every envelope carries the epoch the writer believed current. A read
of an older epoch is stale: the entry is deleted and the read is a miss. The
epoch only grows, by ``bump(marker)``: a Lua script increments it once per
distinct marker, however many processes send that marker, and never below the
caller's own epoch. ``LayeredCache`` requests a bump with the flag state version
as marker whenever it sees the layer go live (at start, and every time after a
kill or disable); the bump is applied before the layer is read or written again.
A reader that meets a newer epoch than its own adopts it (only our writers can
produce a verified envelope).

**Bookkeeping heals itself.** The epoch hash and the tombstones are checked by
the scripts that use them. An epoch hash that is missing, of another Redis type,
or without a non-negative integer ``n`` is started afresh at the Redis server's
clock in microseconds (and above the caller's epoch): strictly newer than every
epoch before it, which only ever grew by one per bump, so no entry written
before is served again. A tombstone that is not ``'1'`` with an expiry of at
most the layer's ``ttl`` is deleted. An entry key holding another type is
deleted on read. Each is raised as ``CorruptEntryError`` (``BOOKKEEPING`` or
``FORMAT``) after the repair, so the cache counts it as corruption and the
guard sees it, and the very next call works: no person needs to delete a key.

**Invalidation.** ``invalidate(key)`` deletes the entry and leaves a tombstone for
``hold`` seconds; writes check it atomically (Lua), so a reader that loaded the
value before the invalidation cannot put it back afterwards.

**Writes are read back before they are sent.** With ``check_writes`` (the
default) every envelope is decoded again with the layer's codec and compared
with the value given (``flags.cache.canonical.same``, never through the
serializer a second time); one that reads back as another value is not stored
and raises ``CorruptEntryError`` (``WRITE``): a broken serializer or codec is
caught on its first write.

**Reads.** A layer that builds its own client reads entries over connections of
its own (``flags.cache.direct``), skipping the client's per-command pool checkout;
everything else goes through the client.

**Failures.** Every driver error (refused, timeout, reset, OOM, READONLY,
LOADING...) and ``OSError`` is translated here, once, into
``flags.errors.CacheError`` (chained with ``from``, its message naming the
command or script that failed) and reported to the breaker.
Defaults: 50 ms socket and connect timeouts, no retries.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any

import redis
import redis.asyncio
import redis.cluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from flags.cache.breaker import CircuitBreaker
from flags.cache.codec import SCHEMA_VERSION, Codec, Entry, Rejection, Serializer
from flags.cache.direct import AsyncDirectReader, DirectReader
from flags.cache.scripts import Scripts
from flags.errors import CacheError, CorruptEntryError, ValidationError
from flags.redis_url import RedisKind, async_redis_client, parse_redis_url, redis_client

__all__ = ["DEFAULT_PREFIX", "RedisLayer"]

DEFAULT_PREFIX = "flagrail:cache:"

_DRIVER_ERRORS = (RedisError, OSError)


def _tagged(key: str) -> bytes:
    """``{key}``: a Redis Cluster hash tag, so an entry and its tombstone share a slot.

    Redis hashes the bytes between the first ``{`` and the next ``}`` when there are
    any; an empty tag hashes the whole key. A key that is empty or starts with ``}``
    (whose tag would be empty) is written ``}{~}<key>`` instead (tag ``~``), which no
    key of the first form (always starting with ``{``) can equal. Entry and
    tombstone get the same form, hence the same slot.
    """
    raw = key.encode("utf-8", "surrogatepass")
    if raw and not raw.startswith(b"}"):
        return b"{" + raw + b"}"
    return b"}{~}" + raw


class _LoopSide:
    """What the layer uses on one event loop: client, scripts, and where GETs go (the
    loop's own ``AsyncDirectReader`` when the layer made the client)."""

    __slots__ = ("client", "fetch", "reader", "scripts")

    def __init__(
        self, client: redis.asyncio.Redis, scripts: Scripts, reader: AsyncDirectReader | None
    ) -> None:
        self.client = client
        self.scripts = scripts
        self.reader = reader
        self.fetch = reader.get if reader is not None else client.get


class RedisLayer:
    """Layer ``name`` in Redis at ``url``, entries verified with ``secret``.

    ``ttl`` (seconds) is the Redis expiry of an entry; ``serializer`` turns values
    into bytes (JSON by default). ``client`` / ``async_client`` replace the
    redis-py clients this layer would create (they must not decode responses).

    ``get``/``set``/``delete`` raise ``CacheError`` when Redis fails, and ``get``
    raises ``CorruptEntryError`` (``field`` a ``Rejection``) for an entry it will
    not serve, after deleting it. Callers check ``available()`` (the breaker)
    first. Thread-safe; the async methods may run on any event loop (one client
    per loop).

    Raises ``ValidationError`` at construction for a bad secret, ttl or client.
    """

    remote = True

    def __init__(
        self,
        url: str,
        *,
        secret: bytes,
        ttl: float = 300.0,
        name: str = "l2",
        client: redis.Redis | None = None,
        serializer: Serializer | None = None,
        async_client: redis.asyncio.Redis | None = None,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout: float = 0.05,
        connect_timeout: float = 0.05,
        breaker: CircuitBreaker | None = None,
        check_writes: bool = True,
    ) -> None:
        if not ttl > 0:
            raise ValidationError(f"ttl must be positive seconds, got {ttl!r}", field="ttl")
        if "{" in prefix or "}" in prefix:
            raise ValidationError(
                f"prefix must not hold braces (Redis Cluster hash tags), got {prefix!r}",
                field="prefix",
            )
        # InvalidRedisUrlError (a ValidationError) for a URL no form fits.
        single_server = parse_redis_url(url).kind is RedisKind.SERVER
        for given, label in ((client, "client"), (async_client, "async_client")):
            if given is not None and given.get_encoder().decode_responses:
                raise ValidationError(
                    f"{label} must return bytes (decode_responses=False)", field=label
                )
        self.url = url
        self.name = name
        self.ttl = float(ttl)
        self.prefix = prefix
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.codec = Codec(secret, serializer)
        self.check_writes = check_writes
        # The longest life a tombstone may have; one with more (or none) is garbage.
        self._hold_ms = max(1, int(self.ttl * 1000))
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        # False while the circuit is open: skip this layer without calling Redis.
        self.available = self.breaker.allow
        self.max_age: float | None = None
        self._client = client
        self._owns_client = client is None
        # The read path: a layer's own client reads on its own connections (see
        # flags.cache.direct); a client passed in is used as it is.
        self._direct = (
            DirectReader(url, socket_timeout=socket_timeout, connect_timeout=connect_timeout)
            if client is None and single_server
            else None
        )
        self._single_server = single_server
        if self._direct is not None:
            self._fetch = self._direct.get
        elif client is not None:
            self._fetch = client.get
        else:  # Sentinel or Cluster: through the (lazily built) client
            self._fetch = lambda rkey: self.client().get(rkey)
        self._async_client = async_client
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSide] = (
            weakref.WeakKeyDictionary()
        )
        self._scripts: Scripts | None = None
        self._client_lock = threading.Lock()
        self._epoch: int | None = None
        self._pending: list[str] = []
        self._epoch_lock = threading.Lock()
        self._cache: str | None = None
        self._base = b""
        self._tombs = b""
        self._epoch_key = b""
        self.channel = ""

    @property
    def codec(self) -> Codec:
        """The envelope codec (secret and serializer) of every read and write."""
        return self._codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        self._codec = codec
        self._open = codec.open  # the hot path's bound method follows the codec

    # ----------------------------------------------------------------- binding
    def bind(self, cache: str, *, max_age: float | None = None) -> None:
        """Attach this layer to cache ``cache`` (done by ``LayeredCache``). Once only.

        Raises ``ValidationError`` if the layer already belongs to another cache.
        """
        if self._cache is not None and self._cache != cache:
            raise ValidationError(
                f"layer {self.name!r} already belongs to cache {self._cache!r}", field="layers"
            )
        self._cache = cache
        self.max_age = max_age
        base = f"{self.prefix}{cache}:{self.name}:"
        self._base = (base + "v:").encode()
        self._tombs = (base + "t:").encode()
        self._epoch_key = (base + "epoch").encode()
        self.channel = f"{self.prefix}{cache}:invalidate"

    def storage_key(self, key: str) -> bytes:
        """The Redis key that holds cache key ``key``."""
        return self._base + _tagged(key)

    def _keys(self, key: str) -> tuple[bytes, bytes]:
        """The Redis keys of cache key ``key``: its entry and its tombstone, in one
        Redis Cluster slot (the same hash tag)."""
        tagged = _tagged(key)
        return self._base + tagged, self._tombs + tagged

    @property
    def epoch_key(self) -> bytes:
        return self._epoch_key

    @property
    def epoch(self) -> int | None:
        """The epoch this process writes with (None until first used)."""
        return self._epoch

    # ----------------------------------------------------------------- clients
    def client(self) -> redis.Redis | redis.cluster.RedisCluster:
        """The synchronous client (created on first use, no I/O until a command; a
        cluster client learns the slot map when built, raising ``redis.ConnectionError``
        if no node answers)."""
        c = self._client
        if c is None:
            with self._client_lock:
                if self._client is None:
                    self._client = redis_client(
                        self.url,
                        socket_timeout=self.socket_timeout,
                        socket_connect_timeout=self.connect_timeout,
                        retry=Retry(NoBackoff(), 0),
                        retry_on_timeout=False,
                        health_check_interval=0,
                        decode_responses=False,
                    )
                c = self._client
        return c

    def _sync_scripts(self) -> Scripts:
        scripts = self._scripts
        if scripts is None:
            scripts = self._scripts = Scripts(self.client())
        return scripts

    def _aclient(self) -> _LoopSide:
        """The async client, scripts and reader of the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        side = self._async_clients.get(loop)
        if side is None:
            c = self._async_client
            reader = None
            if c is None:
                c = async_redis_client(
                    self.url,
                    socket_timeout=self.socket_timeout,
                    socket_connect_timeout=self.connect_timeout,
                    retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                    retry_on_timeout=False,
                    health_check_interval=0,
                    decode_responses=False,
                )
                if self._single_server:
                    reader = AsyncDirectReader(
                        self.url,
                        socket_timeout=self.socket_timeout,
                        connect_timeout=self.connect_timeout,
                    )
            side = _LoopSide(c, Scripts(c), reader)
            self._async_clients[loop] = side
        return side

    # ----------------------------------------------------------------- epochs
    def bump(self, marker: str) -> None:
        """Ask for the epoch to grow once for ``marker`` before the next read or write.

        No I/O here; the bump is applied (idempotently across processes) by the
        next call, which fails with ``CacheError`` while it cannot be applied.
        """
        with self._epoch_lock:
            if marker not in self._pending:
                self._pending.append(marker)

    def _learn(self, reply: Any, marker: str, had: bool) -> str | None:
        """Take the epoch script's reply (under ``_epoch_lock``); what it healed, if anything."""
        epoch, state = int(reply[0]), int(reply[1])
        self._epoch = max(self._epoch or 0, epoch)
        if marker and self._pending and self._pending[0] == marker:
            self._pending.pop(0)
        if state == 1:
            return f"epoch hash held garbage; started afresh at epoch {epoch}"
        if state == 2 and had:
            return f"epoch hash was missing; started afresh at epoch {epoch}"
        return None

    def _current_epoch(self) -> int:
        """Apply pending bumps and learn the epoch (one script call each). Raises
        ``CacheError`` naming the epoch script when Redis fails, and
        ``CorruptEntryError`` (``BOOKKEEPING``) when the script found the epoch hash
        broken and started it afresh: the layer is usable again at once."""
        healed: str | None = None
        try:
            with self._epoch_lock:
                script = None
                while self._pending or self._epoch is None:
                    if script is None:
                        script = self._sync_scripts().epoch
                    marker = self._pending[0] if self._pending else ""
                    had = self._epoch is not None
                    reply = script(keys=[self._epoch_key], args=[marker, self._epoch or 0])
                    healed = self._learn(reply, marker, had) or healed
                epoch = self._epoch
        except _DRIVER_ERRORS as exc:
            raise self._failed("epoch script", exc) from exc
        if healed is not None:
            raise self._corrupt_bookkeeping(healed)
        return epoch

    async def _aready(self) -> tuple[_LoopSide, int]:
        """The running loop's client side and the epoch to write with, pending bumps
        applied. Raises like ``_current_epoch``."""
        side = self._aclient()
        epoch = self._epoch
        if epoch is None or self._pending:
            epoch = await self._acurrent_epoch(side.scripts.epoch)
        return side, epoch

    async def _acurrent_epoch(self, script: Any) -> int:
        # Not under the thread lock (it would block the loop); bumps are idempotent,
        # so two tasks applying the same marker agree on the result.
        healed: str | None = None
        try:
            while self._pending or self._epoch is None:
                marker = self._pending[0] if self._pending else ""
                had = self._epoch is not None
                reply = await script(keys=[self._epoch_key], args=[marker, self._epoch or 0])
                with self._epoch_lock:
                    healed = self._learn(reply, marker, had) or healed
        except _DRIVER_ERRORS as exc:
            raise self._failed("epoch script", exc) from exc
        if healed is not None:
            raise self._corrupt_bookkeeping(healed)
        return self._epoch

    def _corrupt_bookkeeping(self, what: str) -> CorruptEntryError:
        """The error for bookkeeping that was broken and is healed: Redis answered."""
        if not self.breaker.clean:
            self.breaker.success()
        return CorruptEntryError(f"redis layer {self.name!r}: {what}", field=Rejection.BOOKKEEPING)

    def _adopt(self, epoch: int) -> None:
        with self._epoch_lock:
            if self._epoch is None or epoch > self._epoch:
                self._epoch = epoch

    # ----------------------------------------------------------------- the layer
    def get(self, key: str) -> Entry | None:
        """The verified entry under ``key``, None if Redis has none.

        Raises ``CacheError`` on a Redis failure (naming the command or script) and
        ``CorruptEntryError`` for an entry that fails to decode or verify, is stale,
        or is not a string at all (deleted first, best-effort), and for broken epoch
        bookkeeping (healed first, see ``_current_epoch``).
        """
        rkey = self._base + _tagged(key)  # storage_key, one call less: hot
        epoch = self._epoch
        if epoch is None or self._pending:
            epoch = self._current_epoch()
        try:
            data = self._fetch(rkey)
        except _DRIVER_ERRORS as exc:
            if _wrong_type(exc):
                self._discard(rkey, b"")
                raise self._not_an_entry(exc) from exc
            raise self._failed("GET", exc) from exc
        if not self.breaker.clean:
            self.breaker.success()
        if data is None:
            return None
        try:
            # The common case inline; _judge handles (and raises for) the rest.
            entry_epoch, written_at, negative, value = self._open(rkey, data)
            max_age = self.max_age
            if entry_epoch != epoch or (
                max_age is not None and not negative and written_at + max_age < time.time()
            ):
                return self._judge(rkey, data, epoch)
            return Entry(value, written_at, negative, self.name)
        except CorruptEntryError as exc:
            if _should_discard(exc, data):
                self._discard(rkey, data)
            raise

    async def aget(self, key: str) -> Entry | None:
        """``get`` on redis.asyncio. Same contract."""
        rkey = self.storage_key(key)
        side, epoch = await self._aready()
        try:
            data = await side.fetch(rkey)
        except _DRIVER_ERRORS as exc:
            if _wrong_type(exc):
                await self._adiscard(side, rkey, b"")
                raise self._not_an_entry(exc) from exc
            raise self._failed("GET", exc) from exc
        if not self.breaker.clean:
            self.breaker.success()
        if data is None:
            return None
        try:
            return self._judge(rkey, data, epoch)
        except CorruptEntryError as exc:
            if _should_discard(exc, data):
                await self._adiscard(side, rkey, data)
            raise

    def _not_an_entry(self, exc: BaseException) -> CorruptEntryError:
        """An entry key held another Redis type (garbage): Redis itself is fine."""
        if not self.breaker.clean:
            self.breaker.success()
        return CorruptEntryError(
            f"redis layer {self.name!r}: entry key holds no string ({exc})", field=Rejection.FORMAT
        )

    def _judge(self, rkey: bytes, data: bytes, epoch: int) -> Entry:
        entry_epoch, written_at, negative, value = self._open(rkey, data)
        if entry_epoch != epoch:
            if entry_epoch < epoch:
                raise CorruptEntryError(
                    f"entry of epoch {entry_epoch}, layer is at {epoch}", field=Rejection.EPOCH
                )
            self._adopt(entry_epoch)
        max_age = self.max_age
        if max_age is not None and not negative and written_at + max_age < time.time():
            raise CorruptEntryError(
                f"entry written {time.time() - written_at:.1f}s ago, max age {max_age}s",
                field=Rejection.AGE,
            )
        return Entry(value, written_at, negative, self.name)

    def _discard(self, rkey: bytes, data: bytes) -> None:
        try:
            self._sync_scripts().discard(keys=[rkey], args=[data])
        except _DRIVER_ERRORS:
            self.breaker.failure()

    async def _adiscard(self, side: _LoopSide, rkey: bytes, data: bytes) -> None:
        try:
            await side.scripts.discard(keys=[rkey], args=[data])
        except _DRIVER_ERRORS:
            self.breaker.failure()

    def _encode(self, rkey: bytes, entry: Entry, epoch: int) -> bytes:
        """The envelope to store; with ``check_writes`` read back first (``Codec.check``),
        so a serializer or codec that changes values is caught before Redis is called."""
        data = self.codec.encode(
            rkey, entry.value, epoch=epoch, written_at=entry.written_at, negative=entry.negative
        )
        if self.check_writes:
            self.codec.check(rkey, data, entry.value, negative=entry.negative)
        return data

    def set_ttl(self, ttl: float) -> None:
        """Change the layer's ttl, and with it how long a delete's tombstone holds
        (``flags.cache.tuning`` binds it to a number flag). Entries already stored
        keep their expiry. Raises ``ValidationError`` unless ``ttl`` is positive and
        finite."""
        if type(ttl) not in (int, float) or not 0 < ttl < float("inf"):
            raise ValidationError(f"ttl must be positive seconds, got {ttl!r}", field="ttl")
        self.ttl = float(ttl)
        self._hold_ms = max(1, int(self.ttl * 1000))

    def _px(self, ttl: float | None) -> int:
        life = self.ttl if ttl is None else min(ttl, self.ttl)
        return max(1, int(life * 1000))

    def _stored(self, reply: Any) -> bool:
        """The write script's reply: stored, refused by a tombstone, or a garbage tombstone
        found (removed; the write refused this once, ``CorruptEntryError``)."""
        if reply == 2:
            raise self._corrupt_bookkeeping("a tombstone key held garbage; removed")
        self.breaker.success()
        return bool(reply)

    def set(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        """Store ``entry`` for ``min(ttl, self.ttl)`` seconds, unless ``key`` was
        invalidated within the hold of its tombstone; True if stored.

        Raises ``CacheError`` on a Redis failure (naming the script) or when the
        serializer cannot encode the value, and ``CorruptEntryError`` when the
        envelope does not read back as ``entry`` (``WRITE``: then Redis is not
        called and the breaker not told) or when broken bookkeeping was found and
        healed (``BOOKKEEPING``: nothing stored this time).
        """
        rkey, tomb = self._keys(key)
        epoch = self._epoch
        if epoch is None or self._pending:
            epoch = self._current_epoch()
        data = self._encode(rkey, entry, epoch)
        try:
            reply = self._sync_scripts().write(
                keys=[rkey, tomb], args=[data, self._px(ttl), self._hold_ms]
            )
        except _DRIVER_ERRORS as exc:
            raise self._failed("write script", exc) from exc
        return self._stored(reply)

    async def aset(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        """``set`` on redis.asyncio. Same contract."""
        rkey, tomb = self._keys(key)
        side, epoch = await self._aready()
        data = self._encode(rkey, entry, epoch)
        try:
            reply = await side.scripts.write(
                keys=[rkey, tomb], args=[data, self._px(ttl), self._hold_ms]
            )
        except _DRIVER_ERRORS as exc:
            raise self._failed("write script", exc) from exc
        return self._stored(reply)

    def delete(self, key: str) -> None:
        """Delete ``key``. Raises ``CacheError`` on a Redis failure."""
        try:
            self.client().delete(self.storage_key(key))
        except _DRIVER_ERRORS as exc:
            raise self._failed("DEL", exc) from exc
        self.breaker.success()

    async def adelete(self, key: str) -> None:
        try:
            await self._aclient().client.delete(self.storage_key(key))
        except _DRIVER_ERRORS as exc:
            raise self._failed("DEL", exc) from exc
        self.breaker.success()

    def invalidate(self, key: str, hold: float = 2.0) -> None:
        """Delete ``key`` and refuse writes of it for ``hold`` seconds (one atomic
        script), so a value loaded before this call is not written back after it.
        Raises ``CacheError`` on a Redis failure."""
        rkey, tomb = self._keys(key)
        hold_ms = min(self._hold_ms, max(1, int(hold * 1000)))  # a tombstone outlives no entry
        try:
            self._sync_scripts().invalidate(keys=[rkey, tomb], args=[hold_ms])
        except _DRIVER_ERRORS as exc:
            raise self._failed("invalidate script", exc) from exc
        self.breaker.success()

    def clear(self) -> None:
        """Logically drop every entry: the next call bumps the epoch. No I/O here."""
        self.bump(f"clear:{time.time_ns()}:{id(self)}")

    def publish(self, channel: str, message: bytes) -> int:
        """PUBLISH ``message``; returns the receiver count. Raises ``CacheError``."""
        try:
            receivers = int(self.client().publish(channel, message))
        except _DRIVER_ERRORS as exc:
            raise self._failed("PUBLISH", exc) from exc
        self.breaker.success()
        return receivers

    def _failed(self, op: str, exc: BaseException) -> CacheError:
        self.breaker.failure()
        return CacheError(f"redis layer {self.name!r}: {op} failed: {exc!r:.200}", field=self.name)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the synchronous client if this layer created it."""
        client, self._client = self._client, None
        self._scripts = None
        if client is not None and self._owns_client:
            client.close()
        if self._direct is not None:
            self._direct.close()

    async def aclose(self) -> None:
        """Close the async client and reader of the running loop, if this layer made them."""
        loop = asyncio.get_running_loop()
        side = self._async_clients.pop(loop, None)
        if side is not None and side.reader is not None:
            await side.reader.aclose()
        if side is not None and self._async_client is None:
            await side.client.aclose()

    def __repr__(self) -> str:
        return f"RedisLayer(name={self.name!r}, url={self.url!r}, ttl={self.ttl})"


def _wrong_type(exc: BaseException) -> bool:
    """Redis refused a command because the key holds another type (garbage there)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def _should_discard(exc: CorruptEntryError, data: bytes) -> bool:
    """Delete what is corrupt, stale or of an older schema; keep a newer schema's
    entries (a newer release is writing them during a rolling deploy)."""
    if exc.field != Rejection.SCHEMA:
        return True
    schema = data[2] if len(data) > 2 else 0
    return schema < SCHEMA_VERSION
