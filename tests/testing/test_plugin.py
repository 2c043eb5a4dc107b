"""Tests of flags.testing.plugin: pytest runs on throwaway projects (pytester).

Each run is a subprocess: declarations and evaluation counts are process-wide, and an
in-process run would leak them into this suite's own flag coverage. Unrelated
third-party plugins are switched off in those runs to keep them fast.
"""

from __future__ import annotations

import importlib.util
import itertools
import json

import pytest

QUIET_PLUGINS = ("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:anyio")

DECLARE = """
import pytest
import flags

flags.declare("auth.cache.l1", kind="release", owner="auth-team")
flags.declare("auth.cache.l2", kind="release", owner="auth-team")
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*QUIET_PLUGINS, "-p", "no:cacheprovider", *args)


class TestFlagCoverage:
    def test_flag_coverage__declared_flag_only_ever_on__fails_naming_it(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(
            DECLARE
            + """
def test_l1_both(flag_client):
    flag_client.set("auth.cache.l1", True)
    assert flag_client.is_enabled("auth.cache.l1")
    flag_client.set("auth.cache.l1", False)
    assert not flag_client.is_enabled("auth.cache.l1")

def test_l2_on(flag_client):
    flag_client.set("auth.cache.l2", True)
    assert flag_client.is_enabled("auth.cache.l2")
"""
        )
        result = run(pytester, "--flag-coverage")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(
            [
                "*= flag coverage =*",
                "flag*kind*owner*on*off*status",
                "auth.cache.l1*release*auth-team*1*1*ok",
                "auth.cache.l2*release*auth-team*1*0*NEVER OFF",
                "flag coverage failed for 1 flag(s): auth.cache.l2 (never off)",
            ]
        )

    def test_flag_coverage__evaluated_both_ways__passes(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            DECLARE
            + """
@pytest.mark.parametrize("on", [True, False])
def test_layers(flag_client, on):
    flag_client.set("auth.cache.l1", on)
    flag_client.set("auth.cache.l2", on)
    assert flag_client.is_enabled("auth.cache.l1") is on
    assert flag_client.is_enabled("auth.cache.l2") is on
"""
        )
        result = run(pytester, "--flag-coverage")
        assert result.ret == pytest.ExitCode.OK
        result.stdout.fnmatch_lines(["auth.cache.l1*1*1*ok", "auth.cache.l2*1*1*ok"])
        result.stdout.no_fnmatch_line("*flag coverage failed*")

    def test_flag_coverage__declared_never_evaluated__fails(
        self, pytester: pytest.Pytester
    ) -> None:
        """The incident: a layer whose flag no test ever turned on or off."""
        pytester.makepyfile(DECLARE + "\ndef test_nothing():\n    pass\n")
        result = run(pytester, "--flag-coverage")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(
            [
                "*flag coverage failed for 2 flag(s): auth.cache.l1 (never evaluated), "
                "auth.cache.l2 (never evaluated)"
            ]
        )

    def test_flag_coverage__evaluated_undeclared_flag_one_way__fails(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(
            """
from flags import get_default_client

def test_default_client(flag_client):
    assert not get_default_client().is_enabled("checkout.v2")
"""
        )
        result = run(pytester, "--flag-coverage")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["checkout.v2*(undeclared)*-*0*1*NEVER ON"])

    def test_flag_coverage__off_by_default__no_table_exit_zero(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(DECLARE + "\ndef test_nothing():\n    pass\n")
        result = run(pytester)
        assert result.ret == pytest.ExitCode.OK
        result.stdout.no_fnmatch_line("*flag coverage*")

    def test_flag_coverage__ini_true__enabled(self, pytester: pytest.Pytester) -> None:
        pytester.makeini("[pytest]\nflag_coverage = true\n")
        pytester.makepyfile(DECLARE + "\ndef test_nothing():\n    pass\n")
        result = run(pytester)
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["*flag coverage failed for 2 flag(s)*"])

    def test_flag_coverage__failing_tests__keep_their_exit_status(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(DECLARE + "\ndef test_fails():\n    assert False\n")
        result = run(pytester, "--flag-coverage")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*flag coverage failed for 2 flag(s)*"])

    def test_flag_coverage__collect_only__no_verdict(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(DECLARE + "\ndef test_nothing():\n    pass\n")
        result = run(pytester, "--flag-coverage", "--collect-only")
        assert result.ret == pytest.ExitCode.OK
        result.stdout.no_fnmatch_line("*flag coverage*")

    def test_flag_coverage_report__file__same_report_as_json(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(
            DECLARE
            + """
def test_l2_on(flag_client):
    flag_client.set("auth.cache.l2", True)
    assert flag_client.is_enabled("auth.cache.l2")
"""
        )
        result = run(pytester, "--flag-coverage-report", "reports/flags.json")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(["flag coverage report written to reports/flags.json"])
        data = json.loads((pytester.path / "reports" / "flags.json").read_text())
        assert data["format"] == 1
        assert data["passed"] is False
        assert data["failing"] == ["auth.cache.l1", "auth.cache.l2"]
        assert data["flags"] == [
            {
                "key": "auth.cache.l1",
                "on": 0,
                "off": 0,
                "declared": True,
                "kind": "release",
                "owner": "auth-team",
                "status": "never evaluated",
            },
            {
                "key": "auth.cache.l2",
                "on": 1,
                "off": 0,
                "declared": True,
                "kind": "release",
                "owner": "auth-team",
                "status": "never off",
            },
        ]

    def test_flag_coverage_ignore__option_and_ini__undeclared_globs_only(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makeini("[pytest]\nflag_coverage_ignore =\n    gen.*\n")
        pytester.makepyfile(
            """
import flags

flags.declare("gen.declared")

def test_generated_keys(flag_client):
    for key in ("gen.a", "gen.b", "prop.c", "gen.declared"):
        flag_client.is_enabled(key)
"""
        )
        result = run(pytester, "--flag-coverage", "--flag-coverage-ignore", "prop.*")
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        result.stdout.fnmatch_lines(
            [
                "gen.declared*NEVER ON",
                "3 evaluated flag(s) ignored (patterns: gen.*, prop.*)",
                "flag coverage failed for 1 flag(s): gen.declared (never on)",
            ]
        )

    @pytest.mark.skipif(
        importlib.util.find_spec("xdist") is None, reason="pytest-xdist is not installed"
    )
    def test_flag_coverage__xdist_two_workers__counts_merged(
        self, pytester: pytest.Pytester
    ) -> None:
        """Declarations and evaluations happen in the workers; the controller reports."""
        pytester.makepyfile(
            DECLARE
            + """
@pytest.mark.parametrize("i", range(8))
def test_l1(flag_client, i):
    flag_client.set("auth.cache.l1", i % 2 == 0)
    flag_client.is_enabled("auth.cache.l1")

@pytest.mark.flag_matrix("auth.cache.l2")
def test_l2(flag_client):
    flag_client.is_enabled("auth.cache.l2")
"""
        )
        result = run(pytester, "-n", "2", "--flag-coverage", "--flag-coverage-report", "r.json")
        assert result.ret == pytest.ExitCode.OK, result.stdout.str()
        result.assert_outcomes(passed=10)
        data = json.loads((pytester.path / "r.json").read_text())
        counts = {flag["key"]: (flag["off"], flag["on"], flag["kind"]) for flag in data["flags"]}
        assert counts == {
            "auth.cache.l1": (4, 4, "release"),
            "auth.cache.l2": (1, 1, "release"),
        }
        assert data["notes"] == []


class TestFlagMatrix:
    def test_flag_matrix__two_flags__four_runs_with_readable_ids(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(
            """
import pytest
from flags import get_default_client

@pytest.mark.flag_matrix("auth.cache.l1", "auth.cache.l2")
def test_cache(flag_client, request):
    expected = dict(part.split("=") for part in request.node.callspec.id.split(","))
    assert get_default_client() is flag_client
    for key, word in expected.items():
        assert flag_client.state(key).enabled is (word == "on")
"""
        )
        result = run(pytester, "-v")
        result.assert_outcomes(passed=4)
        result.stdout.fnmatch_lines_random(
            [
                "*::test_cache[[]auth.cache.l1=off,auth.cache.l2=off[]] PASSED*",
                "*::test_cache[[]auth.cache.l1=off,auth.cache.l2=on[]] PASSED*",
                "*::test_cache[[]auth.cache.l1=on,auth.cache.l2=off[]] PASSED*",
                "*::test_cache[[]auth.cache.l1=on,auth.cache.l2=on[]] PASSED*",
            ]
        )

    @pytest.mark.parametrize("n", [1, 3, 4])
    def test_flag_matrix__n_flags__exactly_two_to_the_n_runs(
        self, pytester: pytest.Pytester, n: int
    ) -> None:
        keys = ", ".join(f'"f.{i}"' for i in range(n))
        pytester.makepyfile(
            f"""
import pytest

@pytest.mark.flag_matrix({keys})
def test_it(flag_client):
    pass
"""
        )
        ids = collected_ids(run(pytester, "--collect-only", "-q"))
        assert len(ids) == len(set(ids)) == 2**n
        expected = {
            ",".join(f"f.{i}={'on' if on else 'off'}" for i, on in enumerate(values))
            for values in itertools.product((False, True), repeat=n)
        }
        assert set(ids) == expected

    def test_flag_matrix__pairwise__every_pair_of_values_in_fewer_runs(
        self, pytester: pytest.Pytester
    ) -> None:
        keys = [f"f.{i}" for i in range(6)]
        pytester.makepyfile(
            f"""
import pytest

@pytest.mark.flag_matrix({", ".join(repr(k) for k in keys)}, pairwise=True)
def test_it(flag_client, request):
    expected = dict(part.split("=") for part in request.node.callspec.id.split(","))
    for key, word in expected.items():
        assert flag_client.state(key).enabled is (word == "on")
"""
        )
        result = run(pytester)
        result.assert_outcomes(passed=6)
        ids = collected_ids(run(pytester, "--collect-only", "-q"))
        runs = [
            {key: word == "on" for key, word in (part.split("=") for part in run_id.split(","))}
            for run_id in ids
        ]
        assert len(runs) == 6
        for a, b in itertools.combinations(keys, 2):
            assert {(r[a], r[b]) for r in runs} == {(x, y) for x in (0, 1) for y in (0, 1)}

    def test_flag_matrix__test_without_flag_client__default_client_set_and_restored(
        self, pytester: pytest.Pytester
    ) -> None:
        pytester.makepyfile(
            """
import pytest
from flags import get_default_client, set_default_client
from flags.testing import TestFlagClient

APP_CLIENT = TestFlagClient()
set_default_client(APP_CLIENT)

@pytest.fixture
def service():
    # Built before the test body: the run's values are already in place.
    return {"l2": get_default_client().state("auth.cache.l2").enabled}

@pytest.mark.flag_matrix("auth.cache.l2")
def test_service(service, request):
    client = get_default_client()
    assert client is not APP_CLIENT
    assert service["l2"] is request.node.callspec.id.endswith("=on")
    assert client.state("auth.cache.l2").enabled is service["l2"]

def test_after():
    assert get_default_client() is APP_CLIENT
"""
        )
        result = run(pytester)
        result.assert_outcomes(passed=3)

    def test_flag_matrix__with_parametrize__cross_product(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            """
import pytest

@pytest.mark.parametrize("tenant", ["acme", "globex"])
@pytest.mark.flag_matrix("auth.cache.l2")
def test_it(flag_client, tenant):
    pass
"""
        )
        ids = collected_ids(run(pytester, "--collect-only", "-q"))
        assert sorted(ids) == [
            "auth.cache.l2=off-acme",
            "auth.cache.l2=off-globex",
            "auth.cache.l2=on-acme",
            "auth.cache.l2=on-globex",
        ]

    @pytest.mark.parametrize(
        ("marker", "message"),
        [
            ("flag_matrix()", "at least one flag key"),
            ('flag_matrix("Bad Key")', "flag_matrix key must match"),
            ('flag_matrix("a", "a")', "'a' appears twice"),
            ('flag_matrix("a", pairs=True)', "flag_matrix takes only pairwise=, got pairs"),
        ],
    )
    def test_flag_matrix__bad_marker__collection_error_naming_it(
        self, pytester: pytest.Pytester, marker: str, message: str
    ) -> None:
        pytester.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\ndef test_it():\n    pass\n")
        result = run(pytester)
        assert result.ret == pytest.ExitCode.INTERRUPTED
        result.stdout.fnmatch_lines([f"*{message}*"])

    def test_flag_matrix__strict_markers__registered(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(
            'import pytest\n\n@pytest.mark.flag_matrix("a")\ndef test_it():\n    pass\n'
        )
        run(pytester, "--strict-markers").assert_outcomes(passed=2)


def collected_ids(result: pytest.RunResult) -> list[str]:
    """The parametrize ids from ``--collect-only -q`` output."""
    return [
        line.split("[", 1)[1].rstrip("]")
        for line in result.outlines
        if "::" in line and "[" in line
    ]
