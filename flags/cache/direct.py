"""GETs on connections of the Redis layer's own, without a pool checkout per command.

``redis.Redis.get`` checks a connection out of the client's pool for every
command and back in after it: a lock each way, a ``poll`` of the socket (to catch
a connection with an unread reply), pool bookkeeping, observability hooks and an
event dispatch. On redis-py 8.1 that is about a third of a local GET
(``benchmarks/cache.py`` shows both). The Redis layer's hit path pays it on every
read, so the layer reads through a ``DirectReader`` instead: a stack of redis-py
``Connection`` objects, one taken per read and put back after it.

Correctness rests on one rule: a read that fails in any way (timeout, reset,
error reply, interrupt) disconnects its connection before putting it back, so no
connection is ever reused with a reply still on its way - the case the pool's
``poll`` exists for. A disconnected connection reconnects on its next use, with
the layer's connect timeout. The poll's other use, noticing a kept connection the
server closed while it sat idle (a restart, the server's idle timeout), is done
after the fact: a kept connection that fails with a connection error (not a
timeout) is replaced and the read tried once on a new one, so a Redis restart
costs each kept connection one reconnect, not one failed read.

Commands still use redis-py's own packing, parser, timeouts, TLS and
authentication (the connection class and arguments come from the URL, as
``redis.Redis.from_url`` builds them).

``AsyncDirectReader`` is the same for redis.asyncio, one per event loop (an
asyncio connection belongs to the loop that opened it); a read cancelled while
its reply is on the way drops its connection like any other failed read.

Used only for a client the layer builds from its URL; a client passed in by the
caller is used as it is (its pool may be a Sentinel's, or instrumented).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any

import redis.asyncio.connection as aconnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection, Connection, parse_url
from redis.exceptions import ConnectionError
from redis.retry import Retry

__all__ = ["AsyncDirectReader", "DirectReader"]

_READERS: weakref.WeakSet[_KeptConnections] = weakref.WeakSet()


def _forget_in_child() -> None:
    for reader in list(_READERS):
        reader._idle = []


os.register_at_fork(after_in_child=_forget_in_child)


class _KeptConnections:
    """What both readers share: connection arguments from the URL, and up to
    ``max_idle`` kept connections (a list's ``pop`` and ``append`` are atomic)."""

    _parse: Callable[[str], Any]
    _default_class: type[Any]
    _retry: Callable[[], Any]

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float,
        connect_timeout: float,
        max_idle: int = 128,
    ) -> None:
        kwargs: dict[str, Any] = dict(self._parse(url))
        kwargs.update(
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=self._retry(),
            retry_on_timeout=False,
            health_check_interval=0,
            decode_responses=False,  # envelopes are bytes, whatever the URL asks
        )
        self._class = kwargs.pop("connection_class", self._default_class)
        self._kwargs = kwargs
        self.max_idle = max_idle
        self._idle: list[Any] = []
        _READERS.add(self)

    @property
    def idle(self) -> int:
        """Connections kept for the next reads."""
        return len(self._idle)

    def _new(self) -> Any:
        """A connection, not yet connected (it connects on first use)."""
        return self._class(**self._kwargs)

    def _keep(self, conn: Any) -> bool:
        """Keep ``conn`` for a later read if there is room; False when the caller
        must disconnect it instead."""
        idle = self._idle  # the current list: close() or a fork may have replaced it
        if len(idle) < self.max_idle:
            idle.append(conn)
            return True
        return False


class DirectReader(_KeptConnections):
    """GET on up to ``max_idle`` kept connections to ``url``. Thread-safe; each read
    has a connection to itself.

    ``get`` raises what redis-py raises (``redis.RedisError``, ``OSError``).
    Forked children start with no connections (the parent's sockets stay the
    parent's).
    """

    _parse = staticmethod(parse_url)
    _default_class = Connection
    _retry = staticmethod(lambda: Retry(NoBackoff(), 0))

    def get(self, key: bytes) -> bytes | None:
        """``GET key``: the bytes, or None when the key does not exist."""
        try:
            conn = self._idle.pop()
        except IndexError:
            return self._get_on(self._new(), key)
        try:
            return self._get_on(conn, key)
        except ConnectionError:
            # A kept connection the server or a middlebox closed while it was idle (a
            # restart, an idle timeout): one try on a new connection. Not for timeouts.
            return self._get_on(self._new(), key)

    def _get_on(self, conn: AbstractConnection, key: bytes) -> bytes | None:
        try:
            conn.send_packed_command(conn.pack_command("GET", key), check_health=False)
            data: bytes | None = conn.read_response()
        except BaseException:
            conn.disconnect()  # whatever happened, no reply may be left on this socket
            self._keep(conn)  # disconnected: it reconnects on its next use
            raise
        if not self._keep(conn):
            conn.disconnect()
        return data

    def close(self) -> None:
        """Disconnect every kept connection (reads after this open new ones)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()


class AsyncDirectReader(_KeptConnections):
    """``DirectReader`` for redis.asyncio: GET on up to ``max_idle`` kept connections of
    the event loop it is used on (one reader per loop). Same contract."""

    _parse = staticmethod(aconnection.parse_url)
    _default_class = aconnection.Connection
    _retry = staticmethod(lambda: AsyncRetry(NoBackoff(), 0))

    async def get(self, key: bytes) -> bytes | None:
        """``GET key``: the bytes, or None when the key does not exist."""
        try:
            conn = self._idle.pop()
        except IndexError:
            return await self._get_on(self._new(), key)
        try:
            return await self._get_on(conn, key)
        except ConnectionError:  # a kept connection closed while idle: one new try
            return await self._get_on(self._new(), key)

    async def _get_on(self, conn: aconnection.AbstractConnection, key: bytes) -> bytes | None:
        try:
            await conn.send_packed_command(conn.pack_command("GET", key), check_health=False)
            data: bytes | None = await conn.read_response()
        except BaseException:  # cancelled included: the reply may still be on its way
            await conn.disconnect(nowait=True)
            self._keep(conn)
            raise
        if not self._keep(conn):
            await conn.disconnect()
        return data

    async def aclose(self) -> None:
        """Disconnect every kept connection (on the loop the reader belongs to)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect()
