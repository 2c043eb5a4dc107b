"""Staged rollout plans and scheduled changes.

``flags.plans.model`` is pure (parsing, guards, the ``next_action`` state
machine) and is what this package re-exports: importing it loads no database
driver. ``flags.plans.store.PlanStore`` keeps plans beside the flags and takes
each step in one transaction; ``flags.plans.scheduler.PlanScheduler`` is the
in-server service that advances them.
"""

from flags.plans.model import (
    Guard,
    Observation,
    Plan,
    PlanKind,
    PlanSpec,
    PlanStatus,
    Reading,
    Stage,
    next_action,
    parse_plan,
    parse_schedule,
)

__all__ = [
    "Guard",
    "Observation",
    "Plan",
    "PlanKind",
    "PlanSpec",
    "PlanStatus",
    "Reading",
    "Stage",
    "next_action",
    "parse_plan",
    "parse_schedule",
]
