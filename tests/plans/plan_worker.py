"""A plan scheduler in a process of its own, for the crash and replica tests.

    python plan_worker.py DATABASE_URL [--hang-at-stage N --marker PATH]
                          [--step-delay SECONDS] [--until-done ID ...]

Runs ``PlanScheduler.tick`` every 20 ms. With ``--hang-at-stage N`` the step that
applies stage N writes ``PATH`` and then hangs *inside its transaction* (after the
flag write, before the commit), so the test can SIGKILL the process mid-step.
``--step-delay`` makes every step linger that long before its commit, so another
process has time to decide on the same plan version. With ``--until-done`` it
exits 0 once none of those plans is active any more.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from flags.plans.model import ApplyStage, PlanStatus
from flags.plans.scheduler import NoMetrics, PlanScheduler
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("database_url")
    parser.add_argument("--hang-at-stage", type=int)
    parser.add_argument("--marker", type=Path)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--until-done", type=int, nargs="+", default=[])
    args = parser.parse_args()

    def hook(_plan: Any, step: Any) -> None:
        if isinstance(step, ApplyStage) and step.index == args.hang_at_stage:
            args.marker.write_text(str(step.index))
            time.sleep(3600)  # killed here, the transaction still open
        time.sleep(args.step_delay)

    store = SqlFlagStore(args.database_url)
    plans = PlanStore(store, step_hook=hook)
    scheduler = PlanScheduler(plans, NoMetrics())
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            scheduler.tick()
            if args.until_done and not any(
                plans.get(i).status in (PlanStatus.PENDING, PlanStatus.RUNNING)
                for i in args.until_done
            ):
                return 0
            time.sleep(0.02)
        return 1
    finally:
        scheduler.close()
        store.close()


if __name__ == "__main__":
    sys.exit(main())
