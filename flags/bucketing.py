"""Tenant bucketing: the stickiness contract shared with Unleash.

A tenant's bucket for a flag is ``murmur3_32("<flag key>:<tenant>", seed=0) % 100 + 1``,
exactly what Unleash's ``flexibleRollout`` strategy computes with ``groupId`` set
to the flag key, so a tenant sits in the same bucket in both systems.

A split over variants uses Unleash's variant hashing instead (``split_bucket_of``:
seed 86028157, buckets 1..1000).

The rollout formula is written once, in ``bucket_of``; ``assign_bucket``, ``in_rollout``
and the SDK's compiled checks (``flags.compiled``, which keep the
``"<flag key>:"`` prefix of each flag) all go through it.
"""

from __future__ import annotations

import mmh3

__all__ = [
    "VARIANT_SEED",
    "assign_bucket",
    "assign_split_bucket",
    "bucket_of",
    "hash_prefix",
    "in_rollout",
    "split_bucket_of",
    "variant_bucket",
]

_hash = mmh3.hash

# Unleash's variant hashing seed: a split's bucket is independent of the rollout's.
VARIANT_SEED = 86028157
SPLIT_BUCKETS = 1000


def hash_prefix(flag_key: str) -> str:
    """The part of the hash input that depends on the flag only: ``"<flag key>:"``."""
    return flag_key + ":"


def bucket_of(hash_input: str) -> int:
    """The bucket, in 1..100, of a whole hash input ``hash_prefix(flag) + tenant``.

    The one place the formula lives. Pure; raises ``TypeError`` if ``hash_input``
    is not a ``str``.
    """
    return _hash(hash_input, 0, False) % 100 + 1


def split_bucket_of(hash_input: str) -> int:
    """The split bucket, in 1..1000, of ``hash_prefix(flag) + tenant``.

    Unleash's variant formula (``murmur3_32("<groupId>:<stickiness value>",
    seed=86028157) % 1000 + 1``, the group id being the flag key): a tenant gets
    the first split variant whose cumulative weight reaches its bucket, as every
    Unleash SDK picks a variant with ``stickiness: tenantId``. The seed differs
    from the rollout's, so a tenant's split bucket does not follow its rollout
    bucket. Pure; raises ``TypeError`` if ``hash_input`` is not a ``str``.
    """
    return _hash(hash_input, VARIANT_SEED, False) % SPLIT_BUCKETS + 1


def variant_bucket(group_id: str, stickiness: str, total: int) -> int:
    """Unleash's variant bucket, in 1..``total``: ``murmur3_32("<group_id>:<stickiness>",
    seed=86028157) % total + 1``, ``total`` being the sum of the variants' weights.

    flagrail's splits always weigh 1000 (``split_bucket_of``); this general form
    reads Unleash variant lists of any total (the client specification's cases).
    Raises ``ValueError`` when ``total`` is not positive.
    """
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    return _hash(f"{group_id}:{stickiness}", VARIANT_SEED, False) % total + 1


def assign_split_bucket(flag_key: str, tenant: str) -> int:
    """Return ``tenant``'s split bucket for ``flag_key``, in 1..1000 (see ``split_bucket_of``)."""
    return split_bucket_of(hash_prefix(flag_key) + tenant)


def assign_bucket(flag_key: str, tenant: str) -> int:
    """Return ``tenant``'s bucket for ``flag_key``, in 1..100 (as Unleash computes it).

    Stable across processes, platforms and releases. A tenant is in a rollout of
    ``p`` percent when its bucket is ``<= p``, so raising ``p`` only adds tenants,
    never drops one.
    """
    return bucket_of(hash_prefix(flag_key) + tenant)


def in_rollout(flag_key: str, tenant: str, rollout: int) -> bool:
    """True when ``tenant`` falls inside a ``rollout`` percent (0..100) of ``flag_key``."""
    if rollout >= 100:
        return True
    if rollout <= 0:
        return False
    return assign_bucket(flag_key, tenant) <= rollout
