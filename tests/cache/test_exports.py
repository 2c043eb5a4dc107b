"""flags.cache's public surface: a sorted ``__all__`` of names that exist, and no import cycle
with the SDK (the cache sits below ``flags.client``)."""

from __future__ import annotations

import ast
from pathlib import Path

import flags.cache


def test_all__sorted_and_importable() -> None:
    """The export list does not drift from what the package holds."""
    names = flags.cache.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        assert hasattr(flags.cache, name), name


def test_modules__never_import_the_sdk_client_or_the_api() -> None:
    """Dependency direction: cache <- client <- api; the cache needs a FlagSource only."""
    for path in Path(flags.cache.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("flags.client", "api", "fastapi")), path
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(("flags.client", "api", "fastapi")), path
