"""Snapshots across releases: an old snapshot reads as today, an old SDK reads a new one.

The previous release's parser and checks are loaded from git (the commit before
typed flags) into a throwaway module, so the test runs the real old code.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from flags.client import FlagClient
from flags.model import FlagState, FlagType, Snapshot, Variant

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE = "8a1217c"  # the last commit before typed flags (#19)
TENANTS = [f"tenant-{i:04d}" for i in range(500)]


def git_show(path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{PREVIOUS_RELEASE}:{path}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def load(name: str, source: str, tmp: Path) -> ModuleType:
    path = tmp / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """The previous release's flags.model and its pure flags.evaluate."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history of the repository")
    tmp = tmp_path_factory.mktemp("previous_release")
    model = load("h10_old_model", git_show("flags/model.py"), tmp)
    compiled = load(
        "h10_old_compiled",
        git_show("flags/compiled.py").replace("from flags.model ", "from h10_old_model "),
        tmp,
    )
    source = git_show("flags/evaluate.py").replace("from flags.model ", "from h10_old_model ")
    evaluate = load(
        "h10_old_evaluate",
        source.replace("from flags.compiled ", "from h10_old_compiled "),
        tmp,
    )
    assert evaluate.evaluate_one is compiled.evaluate_one  # the old rule, end to end
    yield model, evaluate
    sys.modules.pop("h10_old_model", None)
    sys.modules.pop("h10_old_evaluate", None)
    sys.modules.pop("h10_old_compiled", None)


def new_snapshot() -> dict[str, Any]:
    tier = FlagState(
        enabled=True,
        rollout=50,
        tenants_off=frozenset({"tenant-0001"}),
        version=3,
        type=FlagType.STRING,
        variants=(Variant("gold", "G"), Variant("silver", "S"), Variant("safe", "X")),
        off_variant="safe",
        on_variant="gold",
        split=(("gold", 300), ("silver", 700)),
        tenant_variants=(("tenant-0002", "silver"),),
    ).check_variants()
    ttl = FlagState(
        enabled=True,
        rollout=100,
        killed=True,
        type=FlagType.NUMBER,
        variants=(Variant("short", 30), Variant("long", 300)),
        off_variant="short",
        on_variant="long",
    ).check_variants()
    plain = FlagState(enabled=True, rollout=30, tenants_on=frozenset({"tenant-0003"}))
    return Snapshot(
        "production", 9, {"prices.tier": tier, "cache.ttl": ttl, "plain": plain}
    ).to_dict()


def test_old_sdk__new_snapshot__ignores_what_it_does_not_know(
    old: tuple[ModuleType, ModuleType],
) -> None:
    """The previous release parses a snapshot with typed flags and checks them as booleans,
    answering as this release's is_enabled does."""
    old_model, old_evaluate = old
    data = new_snapshot()
    snapshot = old_model.Snapshot.from_dict(data)
    client = FlagClient.from_snapshot(data)
    for key in data["flags"]:
        for tenant in [*TENANTS, None]:
            old_ev = old_evaluate.evaluate(key, snapshot.flags[key], tenant)
            assert old_ev.enabled is client.is_enabled(key, tenant), (key, tenant)


def test_new_sdk__old_snapshot__reads_as_today(old: tuple[ModuleType, ModuleType]) -> None:
    """A snapshot written by the previous release reads as boolean flags, as it did."""
    old_model, _ = old
    old_state = old_model.FlagState(
        enabled=True,
        rollout=40,
        tenants_on=frozenset({"a"}),
        tenants_off=frozenset({"b"}),
        version=2,
    )
    data = old_model.Snapshot("production", 4, {"f": old_state}).to_dict()
    snapshot = Snapshot.from_dict(data)
    assert snapshot.flags["f"] == FlagState(
        enabled=True,
        rollout=40,
        tenants_on=frozenset({"a"}),
        tenants_off=frozenset({"b"}),
        version=2,
    )
    assert snapshot.to_dict() == data  # and writes it back byte for byte the same
