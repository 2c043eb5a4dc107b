"""The evaluation core: one pure function, no I/O, no clock.

Precedence, first match wins:

====  ===================================  ==========  ===========
step  condition                            result      reason
====  ===================================  ==========  ===========
1     state is killed                      off         killed
2     flag unknown or archived             default     missing
3     not enabled                          off         disabled
4     tenant in tenants_off                off         tenant_off
5     tenant in tenants_on                 on          tenant_on
6     tenant's bucket <= rollout           on          rollout
7     otherwise                            off         rollout
====  ===================================  ==========  ===========

Without a tenant, steps 4-6 collapse to "on only when rollout is 100".

The rule is implemented once, by the SDK's compiled checks
(``flags.compiled.CompiledChecks.evaluate``); this function runs them on a
snapshot of one flag, so ``evaluate`` and every ``FlagClient`` agree by
construction (a property test holds both to this table).
"""

from __future__ import annotations

from flags.compiled import evaluate_one
from flags.model import Evaluation, FlagState, Reason

__all__ = ["evaluate"]


def evaluate(
    flag_key: str,
    state: FlagState | None,
    tenant: str | None = None,
    default: bool = False,
    *,
    archived: bool = False,
) -> Evaluation:
    """Evaluate ``flag_key`` in one environment for ``tenant``.

    ``state`` is ``None`` when the flag is unknown in that environment. An invalid
    tenant (not a non-empty string of at most 200 characters without control
    characters) gives ``default`` with reason ``error``. Pure (no I/O, no clock);
    never raises.
    """
    if archived and state is not None and not state.killed:
        # An archived flag is absent from snapshots; a kill still wins (step 1).
        return Evaluation(default is True, Reason.MISSING, state.version)
    return evaluate_one(flag_key, state, tenant, default)
