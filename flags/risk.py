"""The direction of a change: does it add risk, remove it, or neither? Pure, no I/O.

Approvals gate only changes that *raise* risk (``flags.store.change_requests``); a
change that *lowers* it applies at once for whoever may make it. The direction is
judged field by field, from what callers can be served:

==========================================  ===========  ==========================
field                                       raises       lowers
==========================================  ===========  ==========================
``killed``                                  unkill       kill
``enabled``                                 enable       disable
``rollout``                                 up           down
``tenants_on``                              tenant added tenant removed
``tenants_off``                             tenant       tenant added
                                            removed
``on_variant``, ``off_variant``, ``split``  any move     (never)
``tenant_variants``, ``variants``, ``type`` any move     (never)
==========================================  ===========  ==========================

A variant value, a split or a pin that moves callers from one value to another is
never "less" of anything: it always raises. ``version`` and the kill's bookkeeping
(``kill_reason``, ``killed_at``, ``killed_by``) carry no risk of their own.

Each field is judged by itself, whatever the others say: enabling a killed flag
raises even though callers see nothing until the unkill, because whoever approves
the later unkill reviews only the unkill.

**A mixed change is gated as a whole** (``risk`` says ``raises`` when any field
raises). It is not split because its halves are not independent: applying the
lowering half at once would bump the flag's version, which makes the held raising
half stale by the very rule that protects every request (a request applies only to
the version it was reviewed against); and the state between the halves is one
nobody asked for or reviewed. An author who needs the lowering part now sends it
alone, and it applies at once.

Creating a plan or a schedule (``creation_risk``) raises: it will act later,
unattended, on a state nobody can see yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from flags.model import FlagState

__all__ = ["Movement", "Risk", "creation_risk", "movements", "risk"]


class Risk(StrEnum):
    """The direction of a change."""

    RAISES = "raises"
    LOWERS = "lowers"
    NEUTRAL = "neutral"


@dataclass(frozen=True, slots=True)
class Movement:
    """One field's move and its direction: the lines of a change request's diff.

    ``before`` and ``after`` are JSON values (tenant moves list only the tenants that
    moved, sorted).
    """

    field: str
    direction: Risk
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "direction": self.direction.value,
            "before": self.before,
            "after": self.after,
        }


def _flip(field: str, before: bool, after: bool, raising: bool) -> list[Movement]:
    """A boolean field whose move to ``raising`` raises and back lowers."""
    if before == after:
        return []
    return [Movement(field, Risk.RAISES if after is raising else Risk.LOWERS, before, after)]


def _tenants(
    field: str, before: frozenset[str], after: frozenset[str], adding: Risk
) -> list[Movement]:
    """Tenant-set moves: additions go ``adding``'s way, removals the other way."""
    removing = Risk.LOWERS if adding is Risk.RAISES else Risk.RAISES
    out = []
    if added := sorted(after - before):
        out.append(Movement(f"{field}+", adding, None, added))
    if removed := sorted(before - after):
        out.append(Movement(f"{field}-", removing, removed, None))
    return out


def _variant_fields(before: FlagState, after: FlagState) -> list[Movement]:
    out = []
    if before.type != after.type:
        out.append(Movement("type", Risk.RAISES, before.type.value, after.type.value))
    if before.variants != after.variants:
        out.append(
            Movement(
                "variants",
                Risk.RAISES,
                [v.to_dict() for v in before.variants],
                [v.to_dict() for v in after.variants],
            )
        )
    for name in ("on_variant", "off_variant"):
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            out.append(Movement(name, Risk.RAISES, old, new))
    if before.split != after.split:
        out.append(
            Movement(
                "split",
                Risk.RAISES,
                [{"variant": n, "weight": w} for n, w in before.split],
                [{"variant": n, "weight": w} for n, w in after.split],
            )
        )
    old_pins, new_pins = dict(before.tenant_variants), dict(after.tenant_variants)
    for tenant in sorted(old_pins.keys() | new_pins.keys()):
        if old_pins.get(tenant) != new_pins.get(tenant):
            out.append(
                Movement(
                    f"tenant_variants.{tenant}",
                    Risk.RAISES,
                    old_pins.get(tenant),
                    new_pins.get(tenant),
                )
            )
    return out


def movements(before: FlagState, after: FlagState) -> tuple[Movement, ...]:
    """Every field that moved from ``before`` to ``after``, with its direction, in a
    stable order (kill, enabled, rollout, tenants, variant fields). Empty when nothing
    that callers can be served moved."""
    out = _flip("killed", before.killed, after.killed, raising=False)
    out += _flip("enabled", before.enabled, after.enabled, raising=True)
    if before.rollout != after.rollout:
        direction = Risk.RAISES if after.rollout > before.rollout else Risk.LOWERS
        out.append(Movement("rollout", direction, before.rollout, after.rollout))
    out += _tenants("tenants_on", before.tenants_on, after.tenants_on, Risk.RAISES)
    out += _tenants("tenants_off", before.tenants_off, after.tenants_off, Risk.LOWERS)
    out += _variant_fields(before, after)
    return tuple(out)


def risk(before: FlagState, after: FlagState) -> Risk:
    """The direction of the change from ``before`` to ``after``.

    ``RAISES`` when any field raises (a mixed change is gated as a whole; see the
    module docstring for why), else ``LOWERS`` when any field lowers, else
    ``NEUTRAL``. Never raises; total over every pair of states.
    """
    moved = movements(before, after)
    if any(m.direction is Risk.RAISES for m in moved):
        return Risk.RAISES
    if moved:
        return Risk.LOWERS
    return Risk.NEUTRAL


def creation_risk() -> Risk:
    """The direction of creating a rollout plan or a schedule: always ``RAISES``.

    Whatever its stages say, it acts later and unattended on a state nobody can see
    now, so it is reviewed when made; once approved its stages run on their own, and
    its guard rollbacks (lowering changes) never wait.
    """
    return Risk.RAISES
