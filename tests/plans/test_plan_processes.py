"""Plans across real processes: a SIGKILL mid-step, and two servers on one PostgreSQL.

Each stage must be applied exactly once: one ``state.update`` history row by
``plan:<id>`` per stage, in order, and the flag's state version counting them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from plan_support import ENV, FLAG, five_stages

from flags.history import HistoryQuery
from flags.plans.model import PlanStatus, parse_plan
from flags.plans.store import PlanStore
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for
from tests.serve import ServeProcess, wait_all_healthy

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("plan_worker.py")
ROLLOUTS = [0, 5, 25, 50, 100]


def applied_stages(store: SqlFlagStore, plan_id: int) -> list[Any]:
    """Every stage step ``plan:<id>`` recorded, oldest first: the rollout of a state
    change, or ``("again", stage)`` for a stage applied when already in effect."""
    rows = store.list_history(HistoryQuery(actor=f"plan:{plan_id}", limit=500)).items
    steps: list[Any] = []
    for row in reversed(rows):
        if row.action == "state.update":
            steps.append(row.after["rollout"])
        elif row.action == "plan.stage":
            steps.append(("again", row.after["stage"]))
    return steps


def test_worker_killed_mid_step__restart_resumes_from_recorded_stage_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    """SIGKILL while stage 2 is written but not committed: nothing of it remains, and a
    new process carries on from stage 1 to the end, applying every stage once."""
    store = SqlFlagStore(database_url)
    try:
        store.create_flag(FLAG, actor="test")
        plans = PlanStore(store)
        plan = plans.create(FLAG, parse_plan(five_stages("0s")), actor="alice")
        marker = tmp_path / "inside-step-2"
        worker = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                database_url,
                *("--hang-at-stage", "2", "--marker", str(marker)),
            ],
        )
        try:
            wait_for(marker.exists, timeout=30)
        finally:
            worker.kill()  # SIGKILL: no cleanup, the transaction is open
            worker.wait(timeout=10)
        # Then the half-done step left nothing behind
        after_crash = plans.get(plan.id)
        assert (after_crash.stage, after_crash.status) == (1, PlanStatus.RUNNING)
        assert store.get_state(FLAG, ENV).rollout == 5
        assert applied_stages(store, plan.id) == [0, 5]
        # When a new process starts
        restarted = subprocess.run(
            [sys.executable, str(WORKER), database_url, "--until-done", str(plan.id)],
            timeout=60,
            check=False,
        )
        # Then it resumes at stage 2 and applies each remaining stage once
        assert restarted.returncode == 0
        assert plans.get(plan.id).status is PlanStatus.COMPLETED
        assert applied_stages(store, plan.id) == ROLLOUTS
        assert store.get_state(FLAG, ENV).version == len(ROLLOUTS)
    finally:
        store.close()


@pytest.mark.postgres
def test_two_schedulers_with_slow_steps__on_postgres__apply_each_stage_exactly_once(
    postgres_url: str,
) -> None:
    """Two scheduler processes whose every step lingers 100 ms inside its transaction
    (time enough for the other to decide on the same plan version) still apply each
    stage of each plan once."""
    store = SqlFlagStore(postgres_url)
    try:
        plans = PlanStore(store)
        ids = []
        for key in ("slow.a", "slow.b", "slow.c"):
            store.create_flag(key, actor="test")
            ids.append(plans.create(key, parse_plan(five_stages("0s")), actor="alice").id)
        command = [sys.executable, str(WORKER), postgres_url, "--step-delay", "0.1"]
        workers = [subprocess.Popen([*command, "--until-done", *map(str, ids)]) for _ in range(2)]
        try:
            codes = [w.wait(timeout=60) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait(timeout=10)
        assert codes == [0, 0]
        for plan_id in ids:
            assert plans.get(plan_id).status is PlanStatus.COMPLETED
            assert applied_stages(store, plan_id) == ROLLOUTS
    finally:
        store.close()


@pytest.fixture
def two_servers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """Two ``flagrail serve`` replicas on one database, each running the scheduler."""
    servers = (
        ServeProcess(postgres_url, tmp_path / "a.log", scheduler=True),
        ServeProcess(postgres_url, tmp_path / "b.log", scheduler=True),
    )
    try:
        wait_all_healthy(servers, timeout=30)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.mark.postgres
def test_two_servers_on_postgres__never_apply_a_stage_twice_and_survive_one_dying(
    postgres_url: str, two_servers: tuple[ServeProcess, ServeProcess]
) -> None:
    """Both replicas run the scheduler on one database: every plan's stages are applied
    exactly once; after one replica is SIGKILLed the other finishes new plans alone."""
    store = SqlFlagStore(postgres_url)
    try:
        keys = ["rollout.a", "rollout.b", "rollout.c", "rollout.d"]
        for key in keys:
            store.create_flag(key, actor="test")
        _info, token = store.create_token("release-bot", "editor", None, actor="test")
        headers = {"Authorization": f"Bearer {token}"}
        a, b = two_servers

        def create(server: ServeProcess, key: str) -> int:
            response = httpx.post(
                f"{server.base_url}/admin/flags/{key}/plans",
                json=five_stages("200ms"),
                headers=headers,
                timeout=10,
            )
            assert response.status_code == 201, response.text
            return int(response.json()["id"])

        def done(server: ServeProcess, plan_ids: list[int]) -> bool:
            statuses = [
                httpx.get(f"{server.base_url}/admin/plans/{i}", headers=headers, timeout=5).json()[
                    "status"
                ]
                for i in plan_ids
            ]
            assert "rolled_back" not in statuses and "aborted" not in statuses
            return all(s == "completed" for s in statuses)

        first = [create(a, keys[0]), create(b, keys[1]), create(a, keys[2])]
        wait_for(lambda: done(b, first), timeout=60, interval=0.2)
        # When one replica dies without a chance to clean up
        a.kill()
        late = [create(b, keys[3])]
        wait_for(lambda: done(b, late), timeout=60, interval=0.2)
        # Then every stage of every plan was applied exactly once
        for key, plan_id in zip(keys, first + late, strict=True):
            assert applied_stages(store, plan_id) == ROLLOUTS
            assert store.get_state(key, ENV).version == len(ROLLOUTS)
    finally:
        store.close()
