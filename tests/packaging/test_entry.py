"""The console script's entry point, api:main, in an install without the server extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Run api.main with some server modules made unimportable (as in `pip install flagrail`).
WITHOUT = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
import api
api.main(sys.argv[2:])
"""


def _flagrail_without(modules: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, modules, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("missing", "argv"),
    [
        ("typer", ["--help"]),
        ("typer,fastapi,sqlalchemy", ["flags", "list"]),
        ("uvicorn", ["serve", "--database-url", "sqlite://"]),
    ],
    ids=["no-typer-help", "sdk-only-flags-list", "no-uvicorn-serve"],
)
def test_main__server_module_missing__one_line_naming_the_server_install(
    missing: str, argv: list[str]
) -> None:
    """Whether missing at start or inside a command: one line on stderr, exit 1."""
    result = _flagrail_without(missing, *argv)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flagrail: error: this command needs the server install")
    assert 'pip install "flagrail[server]"' in lines[0]


def test_main__server_installed__runs_the_cli() -> None:
    """With every dependency present, api.main is the CLI."""
    result = _flagrail_without("", "db", "--help")
    assert result.returncode == 0
    assert "upgrade" in result.stdout
    assert "check" in result.stdout
