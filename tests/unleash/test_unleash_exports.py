"""flags.unleash exports a sorted ``__all__`` and stays free of the SDK and web stacks."""

from __future__ import annotations

import subprocess
import sys
import types

import flags.unleash


def test_all__sorted_and_complete__matches_public_names() -> None:
    assert flags.unleash.__all__ == sorted(flags.unleash.__all__)
    public = {
        name
        for name, value in vars(flags.unleash).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(flags.unleash.__all__) == public


def test_mapping__fresh_interpreter__imports_neither_unleash_client_nor_web_or_database() -> None:
    """The mapping is pure: the optional UnleashClient is needed only by flags.unleash.client."""
    code = (
        "import sys, flags.unleash\n"
        "print(','.join(m for m in ('UnleashClient', 'yggdrasil_engine', 'fastapi', "
        "'sqlalchemy') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
