"""The envelope a remote cache layer stores, and the entry every layer hands back.

An envelope is bytes, laid out big-endian::

    offset  size  field
    0       2     magic b"\\xfa\\x1c"
    2       1     schema version (SCHEMA_VERSION)
    3       1     flags (bit 0: negative entry, "the loader said no such key")
    4       8     epoch of the layer when written (unsigned)
    12      8     written_at: unix seconds (float64) when the value left the loader
    20      4     payload length n
    24      n     payload: serializer.dumps(value) (empty for a negative entry)
    24+n    16    checksum: keyed BLAKE2b over (len(cache key), cache key, bytes 0..24+n)

The checksum is keyed with the layer's secret and covers the cache key, so an
entry copied to another key, truncated, extended or flipped by one bit fails to
verify. ``decode`` never returns a value it could not verify: it raises
``CorruptEntryError`` whose ``field`` names what failed (see ``Rejection``),
and the caller treats that as a miss.

What a checksum cannot catch is a writer that encodes a well-formed but wrong
value (the incident's broken writer). ``check`` reads an envelope back before it
is stored and compares it with the value itself (a broken serializer or codec
fails there); shadow reads and sampled verification in ``flags.cache.layered``
catch the rest.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from enum import StrEnum
from hmac import compare_digest
from typing import Any, Protocol

import msgspec

from flags.cache.canonical import same
from flags.errors import CacheError, CorruptEntryError, ValidationError

__all__ = [
    "SCHEMA_VERSION",
    "Codec",
    "Entry",
    "Envelope",
    "JsonSerializer",
    "Rejection",
    "Serializer",
]

SCHEMA_VERSION = 1
MAGIC = b"\xfa\x1c"
MIN_SECRET_BYTES = 16
_HEADER = struct.Struct(">2sBBQdI")
_HEADER_SIZE = _HEADER.size
_MAC_SIZE = 16
_MIN_SIZE = _HEADER_SIZE + _MAC_SIZE
_KEY_LEN = struct.Struct(">I")
_NEGATIVE = 0x01
_PERSON = b"flagrail-cache"


class Rejection(StrEnum):
    """Why a stored entry was not served (or not stored): the ``field`` of the
    ``CorruptEntryError``.

    ``FORMAT``, ``CHECKSUM``, ``PAYLOAD`` and ``BOOKKEEPING`` are corruption (the
    guard counts them); ``SCHEMA``, ``EPOCH`` and ``AGE`` are entries that were
    once good but must not be served any more; ``WRITE`` is a write refused
    because its envelope did not read back as the value (the guard counts it as
    a failed verification).
    """

    FORMAT = "format"  # too short, wrong magic, length fields that do not add up
    CHECKSUM = "checksum"  # keyed checksum mismatch: corrupted, forged or copied from another key
    PAYLOAD = "payload"  # verified bytes the serializer cannot load
    SCHEMA = "schema"  # envelope of an older schema version
    EPOCH = "epoch"  # written before the layer's current epoch (before a kill)
    AGE = "age"  # older than the cache's maximum age
    BOOKKEEPING = "bookkeeping"  # the layer's own keys (epoch, tombstones) held garbage: healed
    WRITE = "write"  # an envelope about to be stored read back as another value: not stored

    @property
    def corrupt(self) -> bool:
        return self in _CORRUPT


_CORRUPT = frozenset(
    {Rejection.FORMAT, Rejection.CHECKSUM, Rejection.PAYLOAD, Rejection.BOOKKEEPING}
)


class Serializer(Protocol):
    """Turns a cached value into bytes and back. ``loads(dumps(v))`` must equal ``v``
    for every value the loader returns (compared with ``==``)."""

    def dumps(self, value: Any) -> bytes: ...
    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    """Compact UTF-8 JSON. Tuples come back as lists; non-JSON values, NaN and
    infinities fail ``dumps`` (``TypeError``/``ValueError``), and ``loads`` of
    anything but one JSON document raises ``ValueError``.

    ``dumps`` is the standard library's encoder, built once (``json.dumps`` with
    options would build one per call). ``loads`` is msgspec's JSON decoder, built
    once: it runs on every remote hit and takes about a third of the standard
    library's time, for the same values (big integers stay exact).
    """

    loads: Callable[[bytes], Any]

    def __init__(self) -> None:
        self._encode = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode
        self.loads = msgspec.json.Decoder().decode  # the C method itself: no Python frame

    def dumps(self, value: Any) -> bytes:
        return self._encode(value).encode()


class Entry:
    """A value as a layer hands it back, with where and when it came from.

    ``written_at`` is the unix time the value left the loader (the source of
    truth), carried unchanged when a value is copied from one layer to another,
    so a copy never gets a fresh lease on life. ``negative`` marks "no such key"
    (``value`` is then None). ``source`` names the layer the value was read from,
    None when it came from the loader.
    """

    __slots__ = ("negative", "source", "value", "written_at")

    def __init__(
        self, value: Any, written_at: float, negative: bool = False, source: str | None = None
    ) -> None:
        self.value = value
        self.written_at = written_at
        self.negative = negative
        self.source = source

    def __repr__(self) -> str:
        return (
            f"Entry(value={self.value!r:.60}, written_at={self.written_at}, "
            f"negative={self.negative}, source={self.source!r})"
        )


class Envelope:
    """A decoded, verified envelope. ``value`` is None for a negative entry."""

    __slots__ = ("epoch", "negative", "schema", "value", "written_at")

    def __init__(
        self, schema: int, epoch: int, written_at: float, negative: bool, value: Any
    ) -> None:
        self.schema = schema
        self.epoch = epoch
        self.written_at = written_at
        self.negative = negative
        self.value = value


class Codec:
    """Encode and verify envelopes for one secret and one serializer.

    Thread-safe (holds no mutable state after construction).

    Raises ``flags.errors.ValidationError`` at construction if ``secret`` is not
    ``bytes`` of at least 16 bytes.
    """

    def __init__(self, secret: bytes, serializer: Serializer | None = None) -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValidationError(
                f"secret must be bytes of at least {MIN_SECRET_BYTES} bytes, "
                f"got {type(secret).__name__} of length {len(secret) if secret else 0}",
                field="secret",
            )
        if len(secret) > hashlib.blake2b.MAX_KEY_SIZE:
            secret = hashlib.blake2b(secret).digest()
        self.serializer: Serializer = serializer if serializer is not None else JsonSerializer()
        self._mac = hashlib.blake2b(key=secret, digest_size=_MAC_SIZE, person=_PERSON)
        self._loads = self.serializer.loads

    def _checksum(self, key: bytes, body: bytes) -> bytes:
        mac = self._mac.copy()
        mac.update(_KEY_LEN.pack(len(key)) + key)
        mac.update(body)
        return mac.digest()

    def encode(
        self,
        key: bytes,
        value: Any,
        *,
        epoch: int,
        written_at: float,
        negative: bool = False,
        schema: int = SCHEMA_VERSION,
    ) -> bytes:
        """The envelope of ``value`` stored under ``key`` (the full storage key).

        Raises ``CacheError`` when the serializer cannot encode ``value`` (its
        exception is chained). ``schema`` exists for tests that forge old entries.
        """
        if negative:
            payload = b""
        else:
            try:
                payload = self.serializer.dumps(value)
            except Exception as exc:  # user-supplied serializer: any failure means "cannot store"
                raise CacheError(
                    f"serializer cannot encode a {type(value).__name__}: {exc}", field="value"
                ) from exc
            if not isinstance(payload, bytes):
                raise CacheError(
                    f"serializer.dumps must return bytes, got {type(payload).__name__}",
                    field="value",
                )
        body = (
            _HEADER.pack(
                MAGIC, schema, _NEGATIVE if negative else 0, epoch, written_at, len(payload)
            )
            + payload
        )
        return body + self._checksum(key, body)

    def decode(self, key: bytes, data: bytes) -> Envelope:
        """Verify and decode ``data`` read from ``key``.

        The keyed checksum is checked first, before any header field is read:
        anything that fails it (garbage, damage, a forgery, a copy from another
        key, whatever its schema byte says) is ``checksum`` corruption.

        Raises ``CorruptEntryError`` with ``field`` set to a ``Rejection`` value:
        ``format`` (too short, or verified bytes that are no envelope), ``checksum``
        or ``payload`` for corrupt bytes, ``schema`` for a verified envelope of
        another schema version (every schema keeps the checksum last, over all the
        bytes before it). Epoch and age are checked by the layer, which knows its
        current epoch.
        """
        epoch, written_at, negative, value = self.open(key, data)
        return Envelope(SCHEMA_VERSION, epoch, written_at, negative, value)

    def open(self, key: bytes, data: bytes) -> tuple[int, float, bool, Any]:
        """``decode`` as a plain ``(epoch, written_at, negative, value)`` tuple, for the
        remote layer's hot path. Same checks, same errors."""
        if not isinstance(data, bytes) or len(data) < _MIN_SIZE:
            raise CorruptEntryError("entry too short for an envelope", field=Rejection.FORMAT)
        # The checksum first, over everything before it, before any header field is
        # believed: whatever fails it is corruption (forged, damaged, copied), never a
        # stale entry of another schema that the guard would not count.
        body = len(data) - _MAC_SIZE
        mac = self._mac.copy()
        mac.update(_KEY_LEN.pack(len(key)) + key)
        mac.update(data[:body])
        # compare_digest: no timing oracle on how much of a forged checksum matched.
        if not compare_digest(mac.digest(), data[body:]):
            raise CorruptEntryError("checksum does not verify", field=Rejection.CHECKSUM)
        magic, schema, flags, epoch, written_at, length = _HEADER.unpack_from(data)
        if schema != SCHEMA_VERSION:  # written by us, by another release
            raise CorruptEntryError(
                f"envelope schema {schema}, this code reads {SCHEMA_VERSION}",
                field=Rejection.SCHEMA,
            )
        end = _HEADER_SIZE + length
        if magic != MAGIC or end != body:  # verified, so our own writer got it wrong
            raise CorruptEntryError(
                f"verified entry of {len(data)} bytes is no envelope (magic {magic!r}, "
                f"payload length {length})",
                field=Rejection.FORMAT,
            )
        if flags & _NEGATIVE:
            return epoch, written_at, True, None
        try:
            value = self._loads(data[_HEADER_SIZE:end])
        except Exception as exc:  # user-supplied serializer: any failure is a corrupt payload
            raise CorruptEntryError(
                f"verified payload does not load: {exc}", field=Rejection.PAYLOAD
            ) from exc
        return epoch, written_at, False, value

    def check(self, key: bytes, data: bytes, value: Any, *, negative: bool = False) -> None:
        """Raise ``CorruptEntryError`` (``Rejection.WRITE``) unless ``data``, about to be
        stored under ``key``, decodes to ``value``.

        Judged with ``flags.cache.canonical.same`` against the value itself, never
        through the serializer twice: a serializer whose ``dumps`` or ``loads``
        changes records (the seed incident) fails here, on the write.
        """
        try:
            back = self.decode(key, data)
        except CorruptEntryError as exc:
            raise CorruptEntryError(
                f"the envelope to write does not read back ({exc.field}: {exc}); not stored",
                field=Rejection.WRITE,
            ) from exc
        if back.negative != negative or not same(back.value, value):
            raise CorruptEntryError(
                f"the envelope to write reads back as another value "
                f"({back.value!r:.80} for {value!r:.80}); not stored",
                field=Rejection.WRITE,
            )

    def schema_of(self, data: bytes) -> int | None:
        """The schema byte of ``data``, or None if it is not an envelope at all."""
        if isinstance(data, bytes) and len(data) >= 3 and data[:2] == MAGIC:
            return data[2]
        return None
