"""Flag coverage: was every flag evaluated both on and off during a test run?

Pure: counts and declarations go in, a ``CoverageReport`` comes out; the pytest
plugin collects the inputs (from every xdist worker) and decides the exit status.

A flag is *covered* when at least one evaluation came out on and one came out
off; a typed flag (string, number, json) when every one of its variants was
served at least once (``variants``: ``{flag key: {variant: times served}}``, as
``flags.counts.variant_counts()`` returns it). The report lists every declared
flag and every evaluated one. An evaluated flag nobody declared may be ignored
by a glob pattern (``flag_coverage_ignore``); a declared flag is ignored only by
a pattern equal to its key, never by a glob.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from flags.declarations import Declaration
from flags.model import FLAG_KEY

__all__ = [
    "CoverageReport",
    "CoverageStatus",
    "FlagCoverage",
    "build_report",
    "declarations_to_dict",
    "display_key",
    "merge_counts",
    "merge_variant_counts",
    "subtract_counts",
    "subtract_variant_counts",
]

# {flag key: (off, on)}, as flags.client.evaluation_counts() returns it.
Counts = Mapping[str, tuple[int, int]]
# {flag key: {variant: times served}}, as flags.counts.variant_counts() returns it.
VariantCounts = Mapping[str, Mapping[str, int]]

REPORT_FORMAT = 1


class CoverageStatus(StrEnum):
    OK = "ok"
    NEVER_ON = "never on"
    NEVER_OFF = "never off"
    NEVER_EVALUATED = "never evaluated"
    VARIANT_NEVER_SERVED = "variant never served"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class FlagCoverage:
    """One flag's line in the report. ``kind`` and ``owner`` come from its declaration."""

    key: str
    on: int
    off: int
    declared: bool
    kind: str | None = None
    owner: str | None = None
    ignored: bool = False
    # A typed flag's variants and how often each was served, in name order.
    variants: tuple[tuple[str, int], ...] = ()

    @property
    def unserved(self) -> list[str]:
        """The typed flag's variants never served."""
        return [name for name, n in self.variants if not n]

    @property
    def status(self) -> CoverageStatus:
        if self.ignored:
            return CoverageStatus.IGNORED
        if not self.on and not self.off:
            return CoverageStatus.NEVER_EVALUATED
        if self.variants:
            return CoverageStatus.VARIANT_NEVER_SERVED if self.unserved else CoverageStatus.OK
        if not self.on:
            return CoverageStatus.NEVER_ON
        if not self.off:
            return CoverageStatus.NEVER_OFF
        return CoverageStatus.OK

    @property
    def failing(self) -> bool:
        return self.status not in (CoverageStatus.OK, CoverageStatus.IGNORED)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "key": self.key,
            "on": self.on,
            "off": self.off,
            "declared": self.declared,
            "kind": self.kind,
            "owner": self.owner,
            "status": str(self.status),
        }
        if self.variants:
            data["variants"] = dict(self.variants)
        return data


@dataclass(frozen=True, slots=True)
class CoverageReport:
    """Every declared or evaluated flag, sorted by key, and the ignore patterns used."""

    flags: tuple[FlagCoverage, ...]
    ignore_patterns: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def failing(self) -> list[FlagCoverage]:
        return [flag for flag in self.flags if flag.failing]

    @property
    def passed(self) -> bool:
        return not self.failing

    @property
    def shown(self) -> list[FlagCoverage]:
        """The flags the table shows: every one not ignored."""
        return [flag for flag in self.flags if not flag.ignored]

    @property
    def ignored(self) -> list[str]:
        return [flag.key for flag in self.flags if flag.ignored]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (``--flag-coverage-report``); ``format`` grows on breaking changes."""
        return {
            "format": REPORT_FORMAT,
            "passed": self.passed,
            "flags": [flag.to_dict() for flag in self.shown],
            "failing": [flag.key for flag in self.failing],
            "ignored": self.ignored,
            "ignore_patterns": list(self.ignore_patterns),
            "notes": list(self.notes),
        }

    def render_table(self) -> list[str]:
        """The terminal table, one string per line (no trailing newlines)."""
        header = ("flag", "kind", "owner", "on", "off", "status")
        rows = [
            (
                display_key(flag.key),
                flag.kind or "(undeclared)",
                flag.owner or "-",
                str(flag.on),
                str(flag.off),
                str(flag.status).upper() if flag.failing else str(flag.status),
            )
            for flag in self.shown
        ]
        lines = self._table_lines(header, rows) if rows else ["no flag to check"]
        if self.ignored:
            patterns = ", ".join(self.ignore_patterns)
            lines.append(f"{len(self.ignored)} evaluated flag(s) ignored (patterns: {patterns})")
        return lines

    @staticmethod
    def _table_lines(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        right = {3, 4}  # counts are right-aligned

        def line(cells: Sequence[str]) -> str:
            parts = [
                cell.rjust(width) if i in right else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ]
            return "  ".join(parts).rstrip()

        lines = [line(header), line(["-" * width for width in widths])]
        lines.extend(line(row) for row in rows)
        return lines

    def describe_failures(self) -> str:
        """One sentence naming every failing flag and what it lacked."""
        parts = [
            f"{display_key(flag.key)} ({flag.status}"
            + (f": {', '.join(flag.unserved)})" if flag.unserved else ")")
            for flag in self.failing
        ]
        return f"flag coverage failed for {len(parts)} flag(s): " + ", ".join(parts)


def display_key(key: str) -> str:
    """``key`` as the table shows it: as is when it is a valid flag key, else ``ascii(key)``.

    Evaluated keys come from any code (property tests feed control characters); an
    escaped, quoted form keeps the table aligned and shows a malformed key as one.
    """
    return key if FLAG_KEY.fullmatch(key) else ascii(key)


def build_report(
    declared: Mapping[str, Mapping[str, Any]],
    counts: Counts,
    ignore_patterns: Iterable[str] = (),
    notes: Iterable[str] = (),
    variants: VariantCounts | None = None,
) -> CoverageReport:
    """The coverage of every flag in ``declared`` (key -> ``{"kind", "owner"}``) or ``counts``;
    a flag in ``variants`` is typed, covered when each of its variants was served."""
    patterns = tuple(ignore_patterns)
    variants = variants or {}
    flags = []
    for key in sorted(set(declared) | set(counts)):
        off, on = counts.get(key, (0, 0))
        declaration = declared.get(key)
        if declaration is not None:
            ignored = key in patterns
        else:
            ignored = any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)
        flags.append(
            FlagCoverage(
                key=key,
                on=on,
                off=off,
                declared=declaration is not None,
                kind=declaration.get("kind") if declaration is not None else None,
                owner=declaration.get("owner") if declaration is not None else None,
                ignored=ignored,
                variants=tuple(sorted(variants.get(key, {}).items())),
            )
        )
    return CoverageReport(tuple(flags), patterns, tuple(notes))


def declarations_to_dict(declarations: Mapping[str, Declaration]) -> dict[str, dict[str, Any]]:
    """Plain, picklable form of ``flags.declared_flags()`` (sent from xdist workers)."""
    return {
        key: {"kind": str(d.kind), "owner": d.owner, "module": d.module}
        for key, d in declarations.items()
    }


def merge_counts(*all_counts: Counts) -> dict[str, tuple[int, int]]:
    """Sum ``{key: (off, on)}`` mappings."""
    total: dict[str, tuple[int, int]] = {}
    for counts in all_counts:
        for key, (off, on) in counts.items():
            before = total.get(key, (0, 0))
            total[key] = (before[0] + off, before[1] + on)
    return total


def subtract_counts(counts: Counts, baseline: Counts) -> dict[str, tuple[int, int]]:
    """``counts - baseline`` per key, without the keys that end at zero."""
    result = {}
    for key, (off, on) in counts.items():
        base_off, base_on = baseline.get(key, (0, 0))
        delta = (off - base_off, on - base_on)
        if delta != (0, 0):
            result[key] = delta
    return result


def merge_variant_counts(*all_counts: VariantCounts) -> dict[str, dict[str, int]]:
    """Sum ``{key: {variant: served}}`` mappings (a variant seen at 0 stays, at 0)."""
    total: dict[str, dict[str, int]] = {}
    for counts in all_counts:
        for key, served in counts.items():
            slot = total.setdefault(key, {})
            for name, n in served.items():
                slot[name] = slot.get(name, 0) + n
    return total


def subtract_variant_counts(
    counts: VariantCounts, baseline: VariantCounts
) -> dict[str, dict[str, int]]:
    """``counts - baseline`` per key and variant, keeping the variants (at 0 too) of
    the keys this session evaluated at all."""
    result: dict[str, dict[str, int]] = {}
    for key, served in counts.items():
        base = baseline.get(key, {})
        delta = {name: n - base.get(name, 0) for name, n in served.items()}
        if any(delta.values()) or key not in baseline:
            result[key] = delta
    return result
