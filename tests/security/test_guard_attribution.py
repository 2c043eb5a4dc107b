"""Issue #14, finding 1: a plan guard's rollback names who reported the breach.

A client token can still report counters (SDK reports are the guards' signal), but
counters are attributed to the token and instance that sent them, and the rollback's
reason (in the plan and its history) names the instances and tokens whose counters
crossed the threshold, largest first. The reports go to a real server over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sdk.harness import ENV, Deployment, LiveServer

from flags.history import HistoryQuery
from flags.plans.model import PlanStatus, parse_plan
from flags.plans.scheduler import PlanScheduler

FLAG = "checkout.v2"


@pytest.fixture
def deployment(database_url: str) -> Iterator[Deployment]:
    d = Deployment(database_url)
    try:
        yield d
    finally:
        d.close()


def metrics(server: LiveServer, token: str, instance_id: str, **counters: int) -> None:
    body: dict[str, Any] = {
        "environment": ENV,
        "instance": {
            "instance_id": instance_id,
            "environment": ENV,
            "host": "h",
            "pid": 1,
            "applied_version": 1,
        },
        "counters": {FLAG: counters},
    }
    r = httpx.post(
        f"{server.url}/sdk/v1/metrics",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 202, r.text


def test_guard_breach__rollback_reason_names_instances_and_tokens(
    deployment: Deployment,
) -> None:
    """The reproduced attack (``errors: 1000, reads: 1`` from one client token) still
    trips the guard, but the rollback says which instance of which token sent it."""
    deployment.store.create_flag(FLAG, actor="test")
    server = deployment.server()
    plans = server.app.state.plans
    spec = {
        "environment": ENV,
        "stages": [{"rollout": 5, "enabled": True, "hold": "1h"}, {"rollout": 100}],
        "guards": [{"metric": f"{FLAG}.error_rate", "max": 0.01}],
    }
    plan = plans.create(FLAG, parse_plan(spec), actor="alice")
    scheduler = PlanScheduler(plans, server.sdk.telemetry)
    scheduler.tick()  # stage 0 applied; its hold (the guard's window) starts now
    info, attacker = deployment.store.create_token("leaked-app", "client", [ENV], actor="t")
    metrics(server, deployment.client_token, "i-honest", reads=100, errors=0)
    metrics(server, attacker, "i-forged", reads=1, errors=1000)
    (after, _step), *_ = scheduler.tick()
    assert after.id == plan.id and after.status is PlanStatus.ROLLED_BACK
    reason = after.reason or ""
    assert f"errors reported by instance i-forged of token leaked-app ({info.id}): 1000" in reason
    assert "i-honest" not in reason  # it reported no errors
    rows = deployment.store.list_history(HistoryQuery(actor=f"plan:{plan.id}")).items
    [rollback] = [r for r in rows if r.action == "plan.rollback"]
    assert f"instance i-forged of token leaked-app ({info.id})" in (rollback.reason or "")
