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
"""

from __future__ import annotations

from flags.bucketing import in_rollout
from flags.model import Evaluation, FlagState, Reason, is_valid_tenant


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
    characters) gives ``default`` with reason ``error``. Never raises for
    well-typed arguments.
    """
    if state is not None and state.killed:
        return Evaluation(False, Reason.KILLED, state.version)
    if state is None or archived:
        return Evaluation(default, Reason.MISSING, state.version if state else 0)
    if not state.enabled:
        return Evaluation(False, Reason.DISABLED, state.version)
    if tenant is None:
        return Evaluation(state.rollout >= 100, Reason.ROLLOUT, state.version)
    if not is_valid_tenant(tenant):
        return Evaluation(default, Reason.ERROR, state.version, "invalid tenant")
    if tenant in state.tenants_off:
        return Evaluation(False, Reason.TENANT_OFF, state.version)
    if tenant in state.tenants_on:
        return Evaluation(True, Reason.TENANT_ON, state.version)
    return Evaluation(in_rollout(flag_key, tenant, state.rollout), Reason.ROLLOUT, state.version)
