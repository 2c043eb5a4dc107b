"""Which tenant ids bucket the same in every Unleash SDK.

flagrail, the Python UnleashClient and Unleash's Rust engine hash the UTF-8
bytes of ``"<flag>:<tenant>"``. The Node.js ``unleash-client`` hashes the
string's UTF-16 code units, each cut to its low byte (``charCodeAt(i) & 0xff``,
murmurhash3js). The two agree exactly when every character is ASCII: a tenant
id of ASCII characters buckets the same in every SDK, in rollouts and splits.
"""

from __future__ import annotations

import mmh3
from hypothesis import given
from hypothesis import strategies as st

from flags.bucketing import VARIANT_SEED


def murmur3_code_units(text: str, seed: int) -> int:
    """murmur3_32 over ``charCodeAt(i) & 0xff`` of each UTF-16 code unit (Node's SDK)."""
    units = text.encode("utf-16-le")
    data = bytes(units[i] for i in range(0, len(units), 2))  # the low byte of each unit
    return mmh3.hash(data, seed, signed=False)


@given(st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=40))
def test_ascii_tenant__same_hash_in_every_sdk(tenant: str) -> None:
    """ASCII tenant ids: UTF-8 bytes and UTF-16 low bytes are the same string of bytes."""
    for seed in (0, VARIANT_SEED):
        text = f"prices.tier:{tenant}"
        assert mmh3.hash(text, seed, signed=False) == murmur3_code_units(text, seed)


def test_non_ascii_tenant__hashes_differ_between_sdks() -> None:
    """A non-ASCII tenant id may land in another bucket in the Node SDK: keep ids ASCII."""
    text = "prices.tier:tënant-ü"
    assert mmh3.hash(text, 0, signed=False) != murmur3_code_units(text, 0)
