"""Snapshots compiled for lookups: the SDK's hot-path data structure.

A ``CompiledFlag`` precomputes everything a check needs (the fixed answer of a
killed or disabled flag, the hash prefix, the ``Evaluation`` objects it can
return), so a check allocates nothing beyond the hash input of a rollout
tenant. A ``CompiledSnapshot`` is immutable once built and swapped into a
client by one attribute assignment, so a reader sees a whole snapshot or the
previous one, never a mix.

The result of every compiled check equals ``flags.evaluate.evaluate`` on the
same state (a property test holds them together).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flags.model import Evaluation, FlagState, Reason, Snapshot

__all__ = ["CompiledFlag", "CompiledSnapshot", "compile_snapshot"]

# Evaluations are immutable values; flags at the same state version share them, so a
# snapshot of 10,000 flags holds a few hundred Evaluation objects, not 70,000.
_EVALUATIONS: dict[tuple[bool, Reason, int], Evaluation] = {}


def _evaluation(enabled: bool, reason: Reason, version: int) -> Evaluation:
    key = (enabled, reason, version)
    ev = _EVALUATIONS.get(key)
    if ev is None:
        ev = _EVALUATIONS.setdefault(key, Evaluation(enabled, reason, version))
    return ev


class CompiledFlag:
    """One flag's state in one environment, ready for checks. Immutable by convention."""

    __slots__ = (
        "counts",
        "ev_fixed",
        "ev_no_tenant",
        "ev_rollout_off",
        "ev_rollout_on",
        "ev_tenant_off",
        "ev_tenant_on",
        "fixed",
        "key",
        "no_tenant",
        "open_all",
        "prefix",
        "rollout",
        "state",
        "tenants_off",
        "tenants_on",
        "version",
    )

    def __init__(self, key: str, state: FlagState, counts: list[int]) -> None:
        self.key = key
        self.state = state
        self.version = v = state.version
        # counts[False] / counts[True]: evaluations that came out off / on.
        self.counts = counts
        if state.killed:
            self.fixed: bool | None = False
            self.ev_fixed: Evaluation | None = _evaluation(False, Reason.KILLED, v)
        elif not state.enabled:
            self.fixed = False
            self.ev_fixed = _evaluation(False, Reason.DISABLED, v)
        else:
            self.fixed = None
            self.ev_fixed = None
        self.no_tenant = state.rollout >= 100
        # On for every valid tenant (is_enabled skips the hash): full rollout, nobody off.
        self.open_all = state.rollout >= 100 and not state.tenants_off
        self.ev_no_tenant = _evaluation(self.no_tenant, Reason.ROLLOUT, v)
        self.tenants_on = state.tenants_on
        self.tenants_off = state.tenants_off
        self.rollout = state.rollout
        self.prefix = key + ":"
        self.ev_tenant_on = _evaluation(True, Reason.TENANT_ON, v)
        self.ev_tenant_off = _evaluation(False, Reason.TENANT_OFF, v)
        self.ev_rollout_on = _evaluation(True, Reason.ROLLOUT, v)
        self.ev_rollout_off = _evaluation(False, Reason.ROLLOUT, v)


@dataclass(frozen=True, slots=True)
class CompiledSnapshot:
    """A whole environment, compiled. ``table`` maps flag key to ``CompiledFlag``."""

    environment: str
    version: int
    table: Mapping[str, CompiledFlag]
    snapshot: Snapshot

    def with_change(
        self,
        version: int,
        flag: str,
        state: FlagState | None,
        counts: dict[str, list[int]],
    ) -> CompiledSnapshot:
        """This snapshot with one flag replaced (``state`` None removes it), at ``version``.

        Compiles only the changed flag: the cost is two dict copies, not a recompilation.
        """
        flags = dict(self.snapshot.flags)
        table = dict(self.table)
        if state is None:
            flags.pop(flag, None)
            table.pop(flag, None)
        else:
            flags[flag] = state
            slot = counts.get(flag)
            if slot is None:
                slot = counts[flag] = [0, 0]
            table[flag] = CompiledFlag(flag, state, slot)
        return CompiledSnapshot(
            self.environment, version, table, Snapshot(self.environment, version, flags)
        )


def compile_snapshot(
    snapshot: Snapshot, counts: dict[str, list[int]] | None = None
) -> CompiledSnapshot:
    """Compile ``snapshot``. ``counts`` (per flag key) is shared across recompilations,
    so evaluation counters survive snapshot swaps; missing entries are created."""
    counts = counts if counts is not None else {}
    table: dict[str, CompiledFlag] = {}
    for key, state in snapshot.flags.items():
        slot = counts.get(key)
        if slot is None:
            slot = counts[key] = [0, 0]
        table[key] = CompiledFlag(key, state, slot)
    return CompiledSnapshot(snapshot.environment, snapshot.version, table, snapshot)
