"""Tests of flags.testing.coverage: merging counts, statuses, ignore rules, table and JSON."""

from __future__ import annotations

import json

from flags.declarations import Declaration
from flags.model import FlagKind
from flags.testing.coverage import (
    CoverageStatus,
    build_report,
    declarations_to_dict,
    merge_counts,
    subtract_counts,
)

L2 = {"kind": "release", "owner": "auth"}


def statuses(report) -> dict[str, str]:
    return {flag.key: str(flag.status) for flag in report.flags}


class TestBuildReport:
    def test_build_report__each_side_missing__status_names_it(self) -> None:
        declared = {"a": L2, "b": L2, "c": L2, "d": L2}
        counts = {"a": (1, 1), "b": (0, 3), "c": (2, 0)}
        report = build_report(declared, counts)
        assert statuses(report) == {
            "a": "ok",
            "b": "never off",
            "c": "never on",
            "d": "never evaluated",
        }
        assert [flag.key for flag in report.failing] == ["b", "c", "d"]
        assert not report.passed

    def test_build_report__evaluated_undeclared__listed_and_checked(self) -> None:
        report = build_report({}, {"new.thing": (0, 4)})
        (flag,) = report.flags
        assert (flag.declared, flag.kind, flag.status) == (False, None, CoverageStatus.NEVER_OFF)

    def test_build_report__glob__ignores_undeclared_only(self) -> None:
        declared = {"gen.declared": L2}
        counts = {"gen.declared": (0, 1), "gen.random-1": (0, 1), "other": (1, 1)}
        report = build_report(declared, counts, ignore_patterns=["gen.*"])
        assert report.ignored == ["gen.random-1"]
        assert [flag.key for flag in report.failing] == ["gen.declared"]

    def test_build_report__exact_key__ignores_a_declared_flag(self) -> None:
        report = build_report({"legacy.flag": L2}, {}, ignore_patterns=["legacy.flag"])
        assert report.passed
        assert report.ignored == ["legacy.flag"]

    def test_build_report__nothing__passes_with_empty_table(self) -> None:
        report = build_report({}, {})
        assert report.passed
        assert report.render_table() == ["no flag to check"]


class TestRendering:
    def test_render_table__rows__aligned_failures_upper_case(self) -> None:
        report = build_report({"auth.cache.l2": L2}, {"auth.cache.l2": (0, 12), "x": (3, 4)})
        lines = report.render_table()
        assert lines[0].split() == ["flag", "kind", "owner", "on", "off", "status"]
        assert lines[2].split() == ["auth.cache.l2", "release", "auth", "12", "0", "NEVER", "OFF"]
        assert lines[3].split() == ["x", "(undeclared)", "-", "4", "3", "ok"]
        assert lines[0].index("status") == lines[2].index("NEVER") == lines[3].index("ok")
        on_end = lines[0].index(" on ") + 3  # counts are right-aligned under their header
        assert lines[2][on_end - 2 : on_end] == "12" and lines[3][on_end - 1] == "4"

    def test_render_table__ignored__counted_below_the_table(self) -> None:
        report = build_report({}, {"gen.a": (1, 0), "gen.b": (1, 0)}, ignore_patterns=["gen.*"])
        assert report.render_table()[-1] == "2 evaluated flag(s) ignored (patterns: gen.*)"

    def test_describe_failures__failing_flags__each_named_with_its_status(self) -> None:
        report = build_report({"a": L2, "b": L2}, {"a": (0, 1)})
        assert report.describe_failures() == (
            "flag coverage failed for 2 flag(s): a (never off), b (never evaluated)"
        )

    def test_render_table__malformed_keys__escaped_and_quoted(self) -> None:
        report = build_report({}, {"bad\x00key": (0, 1), "Auth.Cache": (0, 1), "é": (1, 0)})
        keys = [line.split()[0] for line in report.render_table()[2:]]
        assert keys == ["'Auth.Cache'", "'bad\\x00key'", "'\\xe9'"]
        assert "'bad\\x00key' (never off)" in report.describe_failures()

    def test_to_dict__report__json_shape(self) -> None:
        report = build_report(
            {"auth.cache.l2": L2}, {"auth.cache.l2": (0, 2), "gen.x": (1, 0)}, ["gen.*"], ["n"]
        )
        data = json.loads(json.dumps(report.to_dict()))
        assert data == {
            "format": 1,
            "passed": False,
            "flags": [
                {
                    "key": "auth.cache.l2",
                    "on": 2,
                    "off": 0,
                    "declared": True,
                    "kind": "release",
                    "owner": "auth",
                    "status": "never off",
                }
            ],
            "failing": ["auth.cache.l2"],
            "ignored": ["gen.x"],
            "ignore_patterns": ["gen.*"],
            "notes": ["n"],
        }


class TestCounts:
    def test_merge_counts__several__summed_per_key(self) -> None:
        assert merge_counts({"a": (1, 2)}, {"a": (3, 0), "b": (0, 1)}, {}) == {
            "a": (4, 2),
            "b": (0, 1),
        }

    def test_subtract_counts__baseline__delta_without_zero_keys(self) -> None:
        counts = {"a": (5, 2), "b": (1, 1), "c": (0, 3)}
        assert subtract_counts(counts, {"a": (1, 2), "b": (1, 1)}) == {"a": (4, 0), "c": (0, 3)}

    def test_declarations_to_dict__declaration__plain_kind_and_owner(self) -> None:
        declaration = Declaration("a.b", FlagKind.KILL_SWITCH, "ops", "", "svc.mod")
        assert declarations_to_dict({"a.b": declaration}) == {
            "a.b": {"kind": "kill-switch", "owner": "ops", "module": "svc.mod"}
        }
