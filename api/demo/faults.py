"""Faults the demo injects into the auth cache's Redis layer, at run time.

Five faults, switched on in a running service process by ``POST /_demo/fault``
(``FaultSwitch``) or, for the server-side ones, done to the throwaway
redis-server by the scenario:

``corrupt-bytes``
    The L2 write path stores damaged bytes: ``FaultyConnection`` flips one
    byte of every cache envelope it sends to Redis (whatever command carries
    it). The envelope's keyed checksum fails, so readers see a corrupt entry.
``wrong-payload``
    The L2 write path stores well-formed entries with the wrong content:
    ``FaultyRedisLayer`` stores, for a key, the tenant and scopes of the record
    it wrote *before* (a reused buffer: another tenant's), or the right tenant
    with no scopes. The envelope is built and checksummed around that
    well-formed payload, so every envelope check passes; only verification
    against the loader (and the guard counting mismatches) can tell.
``serializer``
    The seed incident's fault, where the seed had it: the ``serializer=`` the L2
    layer was built with (``FaultySerializer``) writes every record with its scopes
    emptied. The payload is well formed and the envelope is checksummed around it,
    and the fault sits inside the layer's own write path, so a check that ran the
    truth through the layer's serializer would find the two equal; only a
    comparison with the loader's value that keeps clear of that serializer can tell.
``redis-down``
    The throwaway redis-server is killed (``RedisServer.stop``). With an
    external Redis (``FLAGRAIL_REDIS_URL``), which the demo must never touch,
    the cache's own connections refuse instead (``FaultyConnection``).
``redis-slow``
    The throwaway server stalls in ``DEBUG SLEEP`` over and over
    (``RedisStall``); with an external Redis the cache's connections answer
    late instead.

Nothing here is imported by flagrail itself: the faults live in the demo.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.connection import Connection as AsyncConnection
from redis.connection import Connection

from api.demo.keys import KeyRecord
from flags.cache.codec import MAGIC, Entry
from flags.cache.redis import RedisLayer
from flags.errors import ValidationError

__all__ = [
    "Fault",
    "FaultSwitch",
    "FaultyAsyncConnection",
    "FaultyConnection",
    "FaultyRedisLayer",
    "FaultySerializer",
    "KeyRecordSerializer",
    "RedisStall",
    "damage",
    "faulty_clients",
    "parse_fault",
    "wrong_record",
]

log = logging.getLogger("exam_platform.faults")


class Fault(StrEnum):
    CORRUPT_BYTES = "corrupt-bytes"
    WRONG_PAYLOAD = "wrong-payload"
    REDIS_DOWN = "redis-down"
    REDIS_SLOW = "redis-slow"
    SERIALIZER = "serializer"


def parse_fault(value: object, field: str = "fault") -> Fault | None:
    """``None``/``"none"`` -> None; a fault name -> the ``Fault``. Raises ``ValidationError``."""
    if value is None or value == "none":
        return None
    try:
        return Fault(str(value))
    except ValueError as exc:
        raise ValidationError(
            f"{field} must be one of {[f.value for f in Fault]} or 'none', got {value!r:.40}",
            field=field,
        ) from exc


class FaultSwitch:
    """The fault active in this process, if any. Reads take no lock (one attribute).

    ``simulate_outage`` makes ``redis-down``/``redis-slow`` act inside the
    cache's connections (used when the demo must not touch the Redis server).
    """

    def __init__(self, *, simulate_outage: bool = False, slow_seconds: float = 0.25) -> None:
        self.fault: Fault | None = None
        self.since: float | None = None
        self.simulate_outage = simulate_outage
        self.slow_seconds = slow_seconds
        self.damaged_writes = 0
        self.wrong_writes = 0

    def set(self, fault: Fault | None) -> None:
        self.since = time.time() if fault is not None else None
        self.fault = fault

    def to_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault.value if self.fault else None,
            "since": self.since,
            "simulate_outage": self.simulate_outage,
            "damaged_writes": self.damaged_writes,
            "wrong_writes": self.wrong_writes,
        }


def damage(data: bytes) -> bytes:
    """``data`` with its middle byte changed: same length, still starts with the magic,
    so only the checksum can tell. Not an involution: damaging twice still damages."""
    if len(data) < 4:
        return data
    middle = len(data) // 2
    return data[:middle] + bytes([(data[middle] + 1) % 256]) + data[middle + 1 :]


class FaultyConnection(Connection):
    """A redis-py connection that injects the demo's client-side faults.

    Pass ``fault_switch`` through the pool's connection kwargs. With
    ``corrupt-bytes`` on, every argument that is a cache envelope (starts with
    the envelope magic) is damaged on its way out, in plain commands and in
    pipelines alike. With ``simulate_outage`` on, ``redis-down`` refuses every
    call and ``redis-slow`` delays every reply.
    """

    def __init__(self, *args: Any, fault_switch: FaultSwitch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fault_switch = fault_switch

    def _damage_args(self, args: Sequence[Any]) -> tuple[Any, ...]:
        return _damage_args(self.fault_switch, args)

    def _outage(self) -> None:
        delay, error = _outage(self.fault_switch, self.socket_timeout)
        if delay:
            time.sleep(delay)
        if error is not None:
            raise error

    def connect(self) -> None:
        switch = self.fault_switch
        if switch.simulate_outage and switch.fault is Fault.REDIS_DOWN:
            raise redis.ConnectionError("demo fault redis-down: connection refused (simulated)")
        super().connect()

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._outage()
        super().send_command(*self._damage_args(args), **kwargs)

    def pack_command(self, *args: Any) -> Any:
        return super().pack_command(*self._damage_args(args))

    def pack_commands(self, commands: Any) -> Any:
        self._outage()
        return super().pack_commands([self._damage_args(c) for c in commands])


class FaultyAsyncConnection(AsyncConnection):
    """``FaultyConnection`` for redis.asyncio clients (the cache's ``aget`` path)."""

    def __init__(self, *args: Any, fault_switch: FaultSwitch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fault_switch = fault_switch

    async def connect(self) -> None:
        switch = self.fault_switch
        if switch.simulate_outage and switch.fault is Fault.REDIS_DOWN:
            raise redis.ConnectionError("demo fault redis-down: connection refused (simulated)")
        await super().connect()

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        delay, error = _outage(self.fault_switch, self.socket_timeout)
        if delay:
            await asyncio.sleep(delay)
        if error is not None:
            raise error
        await super().send_packed_command(command, check_health)

    def pack_command(self, *args: Any) -> Any:
        # pack_commands (pipelines) calls this too: one place damages every path.
        return super().pack_command(*_damage_args(self.fault_switch, args))


def _damage_args(switch: FaultSwitch, args: Sequence[Any]) -> tuple[Any, ...]:
    if switch.fault is not Fault.CORRUPT_BYTES:
        return tuple(args)
    out = []
    for arg in args:
        if isinstance(arg, bytes) and arg[:2] == MAGIC:
            arg = damage(arg)
            switch.damaged_writes += 1
        out.append(arg)
    return tuple(out)


def _outage(switch: FaultSwitch, socket_timeout: float | None) -> tuple[float, Exception | None]:
    """The simulated outage for one call: ``(seconds to wait, error to raise or None)``."""
    if not switch.simulate_outage:
        return 0.0, None
    if switch.fault is Fault.REDIS_DOWN:
        return 0.0, redis.ConnectionError("demo fault redis-down: refused (simulated)")
    if switch.fault is Fault.REDIS_SLOW:
        delay = switch.slow_seconds
        if socket_timeout is not None and delay >= socket_timeout:
            return socket_timeout, redis.TimeoutError("demo fault redis-slow: timeout (simulated)")
        return delay, None
    return 0.0, None


def faulty_clients(
    url: str,
    switch: FaultSwitch,
    *,
    socket_timeout: float = 0.05,
    connect_timeout: float = 0.05,
) -> tuple[redis.Redis, redis.asyncio.Redis]:
    """A sync and an async redis-py client on ``url`` whose connections inject the faults,
    configured like ``RedisLayer``'s own (short timeouts, no retries, raw bytes)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    sync = redis.Redis.from_url(
        url,
        connection_class=FaultyConnection,
        fault_switch=switch,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    aclient = redis.asyncio.Redis.from_url(
        url,
        connection_class=FaultyAsyncConnection,
        fault_switch=switch,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )
    return sync, aclient


class KeyRecordSerializer:
    """``KeyRecord`` <-> compact JSON. ``loads(dumps(r)) == r``."""

    def dumps(self, value: Any) -> bytes:
        import json

        if not isinstance(value, KeyRecord):
            raise TypeError(f"expected a KeyRecord, got {type(value).__name__}")
        return json.dumps(value.to_dict(), separators=(",", ":")).encode()

    def loads(self, data: bytes) -> KeyRecord:
        import json

        return KeyRecord.from_dict(json.loads(data))


class FaultySerializer(KeyRecordSerializer):
    """``KeyRecordSerializer`` whose ``dumps`` writes each record with its scopes emptied
    while ``serializer`` is on (``wrong_record(record, None)``): well-formed JSON of a
    valid record, so ``loads`` accepts it and the envelope's checksum covers it.
    Counted in ``FaultSwitch.wrong_writes``; ``loads`` is untouched."""

    def __init__(self, fault_switch: FaultSwitch) -> None:
        self.fault_switch = fault_switch

    def dumps(self, value: Any) -> bytes:
        if self.fault_switch.fault is Fault.SERIALIZER and isinstance(value, KeyRecord):
            self.fault_switch.wrong_writes += 1
            value = wrong_record(value, None)
        return super().dumps(value)


def wrong_record(record: KeyRecord, previous: KeyRecord | None) -> KeyRecord:
    """The record a broken writer stores instead of ``record``: the tenant and scopes of
    the record it wrote before (a reused buffer) when that was another tenant's, else
    ``record`` with no scopes. Never equal to ``record`` (unless it had no scopes)."""
    if previous is not None and previous.tenant != record.tenant:
        return KeyRecord(record.key_id, previous.tenant, previous.scopes, previous.revoked)
    return KeyRecord(record.key_id, record.tenant, (), record.revoked)


class FaultyRedisLayer(RedisLayer):
    """``RedisLayer`` whose write path stores the wrong record while ``wrong-payload`` is
    on. The envelope is then built, checksummed and stored as usual around a
    well-formed payload, so no envelope check can tell; reads are untouched."""

    def __init__(self, url: str, *, fault_switch: FaultSwitch, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.fault_switch = fault_switch
        self._previous: KeyRecord | None = None

    def _corrupted(self, entry: Entry) -> Entry:
        value = entry.value
        if not isinstance(value, KeyRecord):
            return entry
        previous, self._previous = self._previous, value
        if self.fault_switch.fault is not Fault.WRONG_PAYLOAD:
            return entry
        self.fault_switch.wrong_writes += 1
        return Entry(wrong_record(value, previous), entry.written_at, entry.negative, entry.source)

    def set(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        return bool(super().set(key, self._corrupted(entry), ttl) is not False)

    async def aset(self, key: str, entry: Entry, ttl: float | None = None) -> bool:
        return bool(await super().aset(key, self._corrupted(entry), ttl) is not False)


class RedisStall:
    """Make a redis-server slow: a thread keeps it in ``DEBUG SLEEP`` for ``stall``
    seconds out of every ``stall + gap``. Falls back to SIGSTOP/SIGCONT cycles
    (``server.pause``/``resume``) when the server refuses ``DEBUG``.

    Only for a throwaway server of our own (``flags.testing.redis_server.RedisServer``).
    """

    def __init__(self, server: Any, *, stall: float = 0.25, gap: float = 0.02) -> None:
        self.server = server
        self.stall = stall
        self.gap = gap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="redis-stall", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = redis.Redis.from_url(self.server.url, socket_timeout=self.stall + 5)
        use_debug = True
        try:
            while not self._stop.is_set():
                if use_debug:
                    try:
                        client.execute_command("DEBUG", "SLEEP", f"{self.stall:.3f}")
                    except redis.ResponseError:
                        log.info("DEBUG is disabled on this server; stalling with SIGSTOP")
                        use_debug = False
                        continue
                    except redis.RedisError:
                        if self._stop.wait(self.gap):
                            break
                        continue
                else:
                    self.server.pause()
                    self._stop.wait(self.stall)
                    self.server.resume()
                self._stop.wait(self.gap)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.stall + 6)
            self._thread = None
        if not self.server.paused:
            return
        self.server.resume()
