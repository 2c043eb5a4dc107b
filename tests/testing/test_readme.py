"""The README keeps its promises: short, two commands, and a pytest-plugin snippet that runs.

The second command is the one ``.ci/run`` extracts and runs, so CI runs what the README says.
The plugin snippet is run as written (pytester, in a subprocess), and once more marked with its
first flag only, where the README says the run fails naming the flag never turned on.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text(encoding="utf-8")
QUIET_PLUGINS = ("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:anyio")


def python_block_after(heading: str) -> str:
    """The first ```python block after the ``## heading`` line."""
    start = README.index(f"\n## {heading}\n")
    match = re.compile(r"```python\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no python block under {heading!r}"
    return match.group(1)


def test_readme__length__at_most_250_lines() -> None:
    assert len(README.splitlines()) <= 250


def test_readme__two_commands__ci_runs_the_second() -> None:
    commands = re.findall(r"^    (python3 -m venv \.venv && .*)$", README, re.M)
    assert len(commands) == 2, commands
    assert commands[0].endswith("flagrail serve")
    extracted = subprocess.run(
        [
            "sed",
            "-n",
            r"s/^    \(python3 -m venv .venv && .venv\/bin\/pip install .*pytest.*\)$/\1/p",
            "README.md",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == commands[1]
    assert 'bash -c "$TEST_COMMAND"' in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_readme__plugin_snippet__passes_with_flag_coverage(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_snippet=python_block_after("The pytest plugin"))
    result = pytester.runpytest_subprocess(
        *QUIET_PLUGINS, "-p", "no:cacheprovider", "--flag-coverage"
    )
    result.assert_outcomes(passed=4)
    assert result.ret == 0


def test_readme__plugin_snippet_one_flag__coverage_fails_as_quoted(
    pytester: pytest.Pytester,
) -> None:
    snippet = python_block_after("The pytest plugin")
    assert "flag_matrix(*LAYERS)" in snippet
    pytester.makepyfile(
        test_snippet=snippet.replace("flag_matrix(*LAYERS)", "flag_matrix(LAYERS[0])")
    )
    result = pytester.runpytest_subprocess(
        *QUIET_PLUGINS, "-p", "no:cacheprovider", "--flag-coverage"
    )
    result.assert_outcomes(passed=2)
    assert result.ret != 0
    quoted = re.search(r"`(flag coverage failed for [^`]*)`", README)
    assert quoted is not None
    result.stdout.fnmatch_lines([f"*{quoted.group(1)}*"])
