"""flagrail: feature flags scoped per environment and tenant, with kill switches.

``pip install flagrail`` is what an application needs: the SDK (this module), the cache
toolkit (``flags.cache``) and the pytest plugin (``flags.testing``), with only httpx,
mmh3, msgspec, prometheus-client, redis and tenacity. The server-side modules
(``flags.store``, ``flags.plans.store`` and ``flags.plans.scheduler``, ``flags.history``,
``flags.settings``) need ``pip install "flagrail[server]"``; nothing imported here does.
"""

from flags.bucketing import assign_bucket
from flags.client import FlagClient, evaluation_counts, get_default_client, set_default_client
from flags.compiled import VariantResult
from flags.declarations import Declaration, declare, declared_flags
from flags.errors import FlagrailError
from flags.evaluate import evaluate
from flags.model import (
    Environment,
    Evaluation,
    Flag,
    FlagKind,
    FlagState,
    FlagType,
    Reason,
    Role,
    Snapshot,
    Variant,
)

__all__ = [
    "Declaration",
    "Environment",
    "Evaluation",
    "Flag",
    "FlagClient",
    "FlagKind",
    "FlagState",
    "FlagType",
    "FlagrailError",
    "Reason",
    "Role",
    "Snapshot",
    "Variant",
    "VariantResult",
    "assign_bucket",
    "declare",
    "declared_flags",
    "evaluate",
    "evaluation_counts",
    "get_default_client",
    "set_default_client",
]
