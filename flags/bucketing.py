"""Tenant bucketing: the stickiness contract shared with Unleash.

A tenant's bucket for a flag is ``murmur3_32("<flag key>:<tenant>", seed=0) % 100 + 1``,
exactly what Unleash's ``flexibleRollout`` strategy computes with ``groupId`` set
to the flag key, so a tenant sits in the same bucket in both systems.
"""

from __future__ import annotations

import mmh3

_hash = mmh3.hash


def assign_bucket(flag_key: str, tenant: str) -> int:
    """Return ``tenant``'s bucket for ``flag_key``, in 1..100 (as Unleash computes it).

    Stable across processes, platforms and releases. A tenant is in a rollout of
    ``p`` percent when its bucket is ``<= p``, so raising ``p`` only adds tenants,
    never drops one.
    """
    return _hash(f"{flag_key}:{tenant}", 0, False) % 100 + 1


def in_rollout(flag_key: str, tenant: str, rollout: int) -> bool:
    """True when ``tenant`` falls inside a ``rollout`` percent (0..100) of ``flag_key``."""
    if rollout >= 100:
        return True
    if rollout <= 0:
        return False
    return _hash(f"{flag_key}:{tenant}", 0, False) % 100 + 1 <= rollout
