"""pyproject.toml's package list (explicit, because migrations/ is installed as
flags.store.migrations) names every package directory, and the entry points exist."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _package_directories(top: str) -> set[str]:
    found = set()
    for path in (REPO_ROOT / top).rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        found.add(".".join(path.parent.relative_to(REPO_ROOT).parts))
    return found


def test_packages__every_directory_with_modules__listed() -> None:
    """A package directory missing from the list would be left out of the wheel silently."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    expected = _package_directories("flags") | _package_directories("api")
    expected |= {"flags.store.migrations", "flags.store.migrations.versions"}
    assert sorted(expected - listed) == [], "add these to [tool.setuptools] packages"
    assert sorted(listed - expected) == [], "these listed packages do not exist"


def test_package_dir__migrations__mapped_from_the_repository_root() -> None:
    """The migrations stay at the root for `alembic` and install inside flags.store."""
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert package_dir == {"flags.store.migrations": "migrations"}
    assert (REPO_ROOT / "migrations" / "env.py").is_file()


def test_entry_points__console_script_and_pytest_plugin__importable() -> None:
    """`flagrail` enters at api:main and the pytest11 plugin is flags.testing.plugin."""
    project = PYPROJECT["project"]
    for target in (project["scripts"]["flagrail"], project["entry-points"]["pytest11"]["flagrail"]):
        module, _, attribute = target.partition(":")
        loaded = importlib.import_module(module)
        assert attribute == "" or callable(getattr(loaded, attribute))
