"""The public names of flags.testing: a sorted ``__all__`` that matches what exists."""

from __future__ import annotations

import flags.testing


def test_all__exports__sorted_and_importable() -> None:
    assert flags.testing.__all__ == sorted(flags.testing.__all__)
    for name in flags.testing.__all__:
        assert hasattr(flags.testing, name), name


def test_import__flags_testing__does_not_import_pytest() -> None:
    """Using TestFlagClient outside pytest must not need pytest."""
    import subprocess
    import sys

    code = "import sys, flags.testing; print('pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
