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

A string, number or json flag (``FlagState.type``) answers the same on/off, and
the ``Evaluation`` carries the variant served (``variant``, ``value``):

====  ===================================  ===================  ===========
step  answer of the table above            variant              reason
====  ===================================  ===================  ===========
1     off (killed)                         ``off_variant``      killed
2-7   off                                  ``off_variant``      unchanged
8     on, tenant in ``tenant_variants``    the pinned variant   pinned
9     on, the state has a ``split``        the split's variant  split
10    on                                   ``on_variant``       unchanged
====  ===================================  ===================  ===========

A kill therefore always serves the declared safe value (``off_variant``). A
split is sticky per tenant: Unleash's variant bucket (``flags.bucketing.
split_bucket_of``), independent of the rollout bucket. Steps 8-9 need a tenant.
A boolean flag's variants are ``on``/``off``; it takes no pins or split.

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

    ``state`` is ``None`` when the flag is unknown in that environment. The empty
    string is no tenant (as ``None``). Any other invalid tenant (not a string of at
    most 200 characters without control characters) gives ``default`` with reason
    ``error``. Pure (no I/O, no clock);
    never raises. For a typed flag the result's ``variant``/``value`` follow the
    second table above (None when the flag is missing or the tenant invalid).
    """
    if archived and state is not None and not state.killed:
        # An archived flag is absent from snapshots; a kill still wins (step 1).
        return Evaluation(default is True, Reason.MISSING, state.version)
    return evaluate_one(flag_key, state, tenant, default)
