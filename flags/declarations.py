"""Flags that code declares it evaluates: the base of flag coverage and clean-up reports."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flags.model import FlagKind, validate_flag_key

__all__ = ["Declaration", "declare", "declared_flags"]


@dataclass(frozen=True, slots=True)
class Declaration:
    key: str
    kind: FlagKind
    owner: str | None
    description: str
    module: str | None


_declared: dict[str, Declaration] = {}
_lock = threading.Lock()


def declare(
    key: str,
    *,
    kind: FlagKind | str = FlagKind.RELEASE,
    owner: str | None = None,
    description: str = "",
    module: str | None = None,
) -> Declaration:
    """Record that this process's code evaluates ``key``; returns the declaration.

    Idempotent: declaring a key again replaces its metadata. Raises
    ``flags.errors.ValidationError`` for a malformed key. Thread-safe.
    """
    validate_flag_key(key)
    declaration = Declaration(key, FlagKind(kind), owner, description, module)
    with _lock:
        _declared[key] = declaration
    return declaration


def declared_flags() -> dict[str, Declaration]:
    """A copy of every declaration made in this process, by key."""
    with _lock:
        return dict(_declared)
