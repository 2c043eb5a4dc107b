"""The envelope: round trips, and every way a stored entry can be wrong is rejected."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flags.cache.codec import MAGIC, SCHEMA_VERSION, Codec, JsonSerializer, Rejection
from flags.errors import CacheError, CorruptEntryError, ValidationError

SECRET = b"codec-secret-0123456789"
KEY = b"flagrail:cache:auth.cache:l2:v:key-a"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


def encode(codec: Codec, value: Any = None, **kwargs: Any) -> bytes:
    args = {"epoch": 7, "written_at": 1_700_000_000.5, **kwargs}
    return codec.encode(KEY, {"tenant": "acme"} if value is None else value, **args)


class TestRoundTrip:
    @given(json_values)
    def test_codec__any_json_value__decodes_to_the_same_value(self, value: Any) -> None:
        """Whatever JSON holds comes back equal, with epoch and written_at intact."""
        codec = Codec(SECRET)
        env = codec.decode(KEY, codec.encode(KEY, value, epoch=3, written_at=12.25))
        assert env.value == value
        assert (env.epoch, env.written_at, env.negative, env.schema) == (
            3,
            12.25,
            False,
            SCHEMA_VERSION,
        )

    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()  # beyond 64 bits too: they must stay exact ints
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda children: (
                st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
            ),
            max_leaves=30,
        )
    )
    def test_json_serializer__decoder__reads_what_the_standard_library_reads(
        self, value: Any
    ) -> None:
        """loads is msgspec's decoder, dumps the standard library's encoder: every
        document written decodes to what ``json.loads`` makes of it, entries written
        before the switch included."""
        serializer = JsonSerializer()
        try:
            data = serializer.dumps(value)
        except UnicodeEncodeError:  # a lone surrogate: not storable, never written
            return
        assert serializer.loads(data) == json.loads(data) == value

    def test_json_serializer__nan_and_infinity__cannot_be_stored(self) -> None:
        """NaN is not JSON and never equal to itself: such values stay out of Redis."""
        codec = Codec(SECRET)
        for bad in (float("nan"), [float("inf")], {"x": float("-inf")}):
            with pytest.raises(CacheError):
                codec.encode(KEY, bad, epoch=1, written_at=1.0)

    def test_codec__negative_entry__round_trips_without_payload(self) -> None:
        """A "no such key" entry carries no value and says so."""
        codec = Codec(SECRET)
        env = codec.decode(KEY, codec.encode(KEY, None, epoch=1, written_at=1.0, negative=True))
        assert env.negative and env.value is None

    def test_codec__custom_serializer__is_used_both_ways(self) -> None:
        """The serializer is pluggable: anything with dumps/loads of bytes."""

        class Reversed:
            def dumps(self, value: Any) -> bytes:
                return str(value).encode()[::-1]

            def loads(self, data: bytes) -> Any:
                return data[::-1].decode()

        codec = Codec(SECRET, Reversed())
        data = codec.encode(KEY, "hello", epoch=0, written_at=0.0)
        assert b"olleh" in data
        assert codec.decode(KEY, data).value == "hello"

    def test_codec__long_secret__is_accepted(self) -> None:
        """Secrets longer than BLAKE2b's key size are hashed down, not rejected."""
        codec = Codec(b"x" * 200)
        assert codec.decode(KEY, encode(codec)).value == {"tenant": "acme"}


class TestRejections:
    def test_decode__garbage_bytes__fail_the_checksum(self) -> None:
        """Bytes that are not an envelope at all fail the checksum, checked first."""
        with pytest.raises(CorruptEntryError) as info:
            Codec(SECRET).decode(KEY, b"\x00garbage written by a broken writer" * 3)
        assert info.value.field == Rejection.CHECKSUM
        assert info.value.field in {r for r in Rejection if r.corrupt}

    @pytest.mark.parametrize("data", [b"", b"\xfa", MAGIC + b"\x01"])
    def test_decode__too_short__is_format_error(self, data: bytes) -> None:
        """Anything shorter than a header and a checksum is rejected."""
        with pytest.raises(CorruptEntryError) as info:
            Codec(SECRET).decode(KEY, data)
        assert info.value.field == Rejection.FORMAT

    def test_decode__copied_to_another_key__fails_the_checksum(self) -> None:
        """The checksum binds the key: an entry copied elsewhere does not verify."""
        codec = Codec(SECRET)
        with pytest.raises(CorruptEntryError) as info:
            codec.decode(b"flagrail:cache:auth.cache:l2:v:key-b", encode(codec))
        assert info.value.field == Rejection.CHECKSUM

    def test_decode__other_secret__fails_the_checksum(self) -> None:
        """An entry written with another secret does not verify."""
        data = encode(Codec(b"another-secret-0123456789"))
        with pytest.raises(CorruptEntryError) as info:
            Codec(SECRET).decode(KEY, data)
        assert info.value.field == Rejection.CHECKSUM

    def test_decode__every_single_byte_flipped__is_rejected(self) -> None:
        """No one-byte corruption anywhere in an envelope yields a value."""
        codec = Codec(SECRET)
        data = encode(codec)
        for i in range(len(data)):
            broken = bytearray(data)
            broken[i] ^= 0x41
            with pytest.raises(CorruptEntryError):
                codec.decode(KEY, bytes(broken))

    def test_decode__truncated_or_extended__is_rejected(self) -> None:
        """Lengths must add up exactly."""
        codec = Codec(SECRET)
        data = encode(codec)
        for broken in (data[:-1], data + b"\x00", data[:30]):
            with pytest.raises(CorruptEntryError):
                codec.decode(KEY, broken)

    def test_decode__old_schema__is_schema_rejection(self) -> None:
        """An envelope of another schema version is not read, whatever it holds."""
        codec = Codec(SECRET)
        with pytest.raises(CorruptEntryError) as info:
            codec.decode(KEY, encode(codec, schema=SCHEMA_VERSION - 1))
        assert info.value.field == Rejection.SCHEMA
        assert codec.schema_of(encode(codec, schema=0)) == 0

    def test_decode__verified_but_unloadable_payload__is_payload_error(self) -> None:
        """A writer whose serializer disagrees with the reader's is caught at load."""

        class Raw:
            def dumps(self, value: Any) -> bytes:
                return b"{not json"

            def loads(self, data: bytes) -> Any:
                return data

        data = Codec(SECRET, Raw()).encode(KEY, "x", epoch=0, written_at=0.0)
        with pytest.raises(CorruptEntryError) as info:
            Codec(SECRET, JsonSerializer()).decode(KEY, data)
        assert info.value.field == Rejection.PAYLOAD

    def test_decode__forged_length_field__fails_the_checksum(self) -> None:
        """A header claiming more payload than there is is never believed."""
        codec = Codec(SECRET)
        data = bytearray(encode(codec))
        struct.pack_into(">I", data, 20, 10_000)
        with pytest.raises(CorruptEntryError) as info:
            codec.decode(KEY, bytes(data))
        assert info.value.field == Rejection.CHECKSUM

    @pytest.mark.parametrize("schema", [0, SCHEMA_VERSION + 1, 255])
    def test_decode__forged_schema_byte__is_corruption_not_a_stale_entry(self, schema: int) -> None:
        """The checksum comes first: a forged entry claiming another schema is corrupt
        (counted, guard-visible), not an old entry quietly missed."""
        codec = Codec(SECRET)
        data = bytearray(encode(codec))
        data[2] = schema
        with pytest.raises(CorruptEntryError) as info:
            codec.decode(KEY, bytes(data))
        assert info.value.field == Rejection.CHECKSUM
        assert Rejection(info.value.field).corrupt

    def test_decode__verified_entry_of_another_schema__is_stale(self) -> None:
        """Our own writer of another release (checksum verified) is a schema miss."""
        codec = Codec(SECRET)
        with pytest.raises(CorruptEntryError) as info:
            codec.decode(KEY, encode(codec, schema=SCHEMA_VERSION + 1))
        assert info.value.field == Rejection.SCHEMA
        assert not Rejection(info.value.field).corrupt

    def test_rejection__corrupt_kinds__are_the_guard_s_business(self) -> None:
        """Format, checksum, payload and broken bookkeeping count as corruption."""
        assert {r for r in Rejection if r.corrupt} == {
            Rejection.FORMAT,
            Rejection.CHECKSUM,
            Rejection.PAYLOAD,
            Rejection.BOOKKEEPING,
        }


class TestConstruction:
    @pytest.mark.parametrize("secret", [b"", b"short", "a-str-secret-0123456789", None])
    def test_codec__weak_or_wrong_secret__raises_validation_error(self, secret: Any) -> None:
        """The secret is bytes of at least 16 bytes."""
        with pytest.raises(ValidationError) as info:
            Codec(secret)
        assert info.value.field == "secret"

    def test_encode__value_the_serializer_cannot_take__raises_cache_error(self) -> None:
        """A non-JSON value fails at encode, with the serializer's error chained."""
        with pytest.raises(CacheError) as info:
            Codec(SECRET).encode(KEY, object(), epoch=0, written_at=0.0)
        assert isinstance(info.value.__cause__, TypeError)
