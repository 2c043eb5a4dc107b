"""``flagrail plan ...`` on a live server: a YAML plan file in, tables and one-line errors out."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from plan_support import FLAG

from api.app import create_app
from api.cli import main
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for
from flags.testing.redis_server import free_port

PLAN_YAML = f"""\
environment: production
stages:
  - {{tenants_on: [internal], enabled: true, hold: 30m}}
  - {{rollout: 5, hold: 30m}}
  - {{rollout: 25, hold: 30m}}
  - {{rollout: 100}}
guards:
  - {{metric: {FLAG}.corrupt_rate, max: 0.01}}
"""


@pytest.fixture
def server(sqlite_url: str) -> Iterator[tuple[str, str]]:
    """(url, editor token) of a server in a thread; the scheduler is off so holds stay put."""
    store = SqlFlagStore(sqlite_url)
    store.create_flag(FLAG, actor="test")
    _info, token = store.create_token("release-manager", "editor", None, actor="test")
    port = free_port()
    app = create_app(Settings(database_url=sqlite_url, scheduler=False), store=store)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: uv.started, timeout=20)
        yield f"http://127.0.0.1:{port}", token
    finally:
        uv.should_exit = True
        thread.join(timeout=20)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def test_plan_cli__create_from_yaml_then_steer__prints_plan_and_its_history(
    server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = server
    auth = ("--url", url, "--token", token)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN_YAML)
    # When
    code, out, err = run(capsys, "plan", "create", FLAG, "-f", str(plan_file), *auth, "--json")
    # Then
    assert code == 0, err
    plan = json.loads(out)
    assert (plan["status"], plan["stage"]) == ("running", 0)
    plan_id = str(plan["id"])
    code, out, _ = run(capsys, "plan", "advance", plan_id, *auth)
    assert code == 0
    assert f"plan {plan_id}  {FLAG} in production  running" in out
    assert "->  1      5" in out  # the current stage is marked
    for action, status in (("pause", "paused"), ("resume", "running"), ("abort", "aborted")):
        code, out, _ = run(capsys, "plan", action, plan_id, "--reason", "drill", *auth, "--json")
        assert (code, json.loads(out)["status"]) == (0, status)
    code, out, _ = run(capsys, "plan", "show", plan_id, *auth)
    assert code == 0
    assert "aborted" in out
    assert "stages.1 rollout=5 (stage 2 of 4); advanced by release-manager" in out
    code, out, _ = run(capsys, "plan", "list", FLAG, *auth)
    assert plan_id in out and "aborted" in out


def test_plan_cli__plan_going_down__one_line_error_naming_the_field(
    server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = server
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(PLAN_YAML.replace("rollout: 25", "rollout: 2"))
    code, out, err = run(
        capsys, "plan", "create", FLAG, "-f", str(plan_file), "--url", url, "--token", token
    )
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert "stages.2.rollout goes down from 5 to 2" in err


def test_plan_cli__schedule_at_a_time__is_pending(
    server: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, token = server
    code, out, err = run(
        capsys,
        "plan",
        "schedule",
        FLAG,
        "--env",
        "production",
        "--at",
        "2999-12-01T02:00:00Z",
        "--off",
        "--url",
        url,
        "--token",
        token,
    )
    assert code == 0, err
    assert "pending  next at 2999-12-01T02:00:00+00:00" in out
