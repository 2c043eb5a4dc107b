"""The public API of ``flags`` is its sorted ``__all__``; the core imports no I/O stack."""

from __future__ import annotations

import subprocess
import sys
import types

import flags


def test_all__sorted_and_complete__matches_public_names() -> None:
    """``__all__`` is sorted, and lists exactly the public non-module names of ``flags``."""
    assert flags.__all__ == sorted(flags.__all__)
    public = {
        name
        for name, value in vars(flags).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(flags.__all__) == public


def test_evaluate__fresh_interpreter__imports_no_database_cache_or_web_stack() -> None:
    """Importing flags.evaluate loads neither sqlalchemy, redis nor fastapi."""
    code = (
        "import sys, flags.evaluate\n"
        "print(','.join(m for m in ('sqlalchemy', 'redis', 'fastapi') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""


def test_flags__fresh_interpreter__imports_no_network_database_or_web_stack() -> None:
    """``import flags`` (FlagClient included) loads no HTTP, Redis, database or web
    package: the sync imports them when a client with a server url is built."""
    code = (
        "import sys, flags\n"
        "print(','.join(m for m in ('httpx', 'redis', 'sqlalchemy', 'fastapi', 'UnleashClient')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
