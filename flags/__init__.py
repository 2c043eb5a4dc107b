"""flagrail: feature flags scoped per environment and tenant, with kill switches."""

from flags.bucketing import assign_bucket
from flags.client import FlagClient, evaluation_counts, get_default_client, set_default_client
from flags.declarations import Declaration, declare, declared_flags
from flags.errors import FlagrailError
from flags.evaluate import evaluate
from flags.model import (
    Environment,
    Evaluation,
    Flag,
    FlagKind,
    FlagState,
    Reason,
    Role,
    Snapshot,
)

__all__ = [
    "Declaration",
    "Environment",
    "Evaluation",
    "Flag",
    "FlagClient",
    "FlagKind",
    "FlagState",
    "FlagrailError",
    "Reason",
    "Role",
    "Snapshot",
    "assign_bucket",
    "declare",
    "declared_flags",
    "evaluate",
    "evaluation_counts",
    "get_default_client",
    "set_default_client",
]
