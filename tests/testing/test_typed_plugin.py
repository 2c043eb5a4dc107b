"""The pytest plugin with typed flags: set() with values and variants, flag_matrix over
variants, and --flag-coverage counting a typed flag covered when every variant was served."""

from __future__ import annotations

import json

import pytest

from flags.errors import ValidationError
from flags.model import FlagType, Reason
from flags.testing import TestFlagClient
from flags.testing.coverage import build_report
from flags.testing.matrix import format_run_id, product_combinations

QUIET_PLUGINS = ("-p", "no:schemathesis", "-p", "no:hypothesispytest", "-p", "no:anyio")
TIERS = {"gold": "G", "silver": "S", "basic": "B"}


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*QUIET_PLUGINS, "-p", "no:cacheprovider", *args)


class TestSet:
    def test_set__number_value__typed_flag_serving_it(self) -> None:
        client = TestFlagClient()
        state = client.set("auth.cache.l1.ttl", 30)
        assert state.type is FlagType.NUMBER
        assert client.value("auth.cache.l1.ttl", 0, "acme") == 30
        assert client.value("auth.cache.l1.ttl", 0) == 30

    def test_set__variants_and_name__serves_that_variant(self) -> None:
        client = TestFlagClient()
        client.set("prices.tier", "silver", variants=TIERS, off_variant="basic")
        assert client.variant("prices.tier", "acme") == ("silver", "S", Reason.ROLLOUT)

    def test_set__tenant__pins_only_that_tenant(self) -> None:
        client = TestFlagClient()
        client.set("prices.tier", "gold", variants=TIERS, off_variant="basic")
        client.set("prices.tier", "silver", tenant="acme")
        assert client.variant("prices.tier", "acme") == ("silver", "S", Reason.PINNED)
        assert client.value("prices.tier", "x", "globex") == "G"

    def test_set__false__serves_the_safe_value(self) -> None:
        client = TestFlagClient()
        client.set("prices.tier", "gold", variants=TIERS, off_variant="basic")
        client.set("prices.tier", False)
        assert client.variant("prices.tier", "acme") == ("basic", "B", Reason.DISABLED)

    def test_set__new_value__replaces_the_value_variant(self) -> None:
        client = TestFlagClient()
        client.set("auth.cache.l1.ttl", 30)
        client.set("auth.cache.l1.ttl", 60)
        assert client.value("auth.cache.l1.ttl", 0, "acme") == 60

    def test_set__bad_value__validation_error_naming_field(self) -> None:
        with pytest.raises(ValidationError) as info:
            TestFlagClient().set("auth.cache.l1.ttl", float("nan"))
        assert info.value.field == "variants.0.value"

    def test_set__typed_flag_another_type__refused(self) -> None:
        client = TestFlagClient()
        client.set("auth.cache.l1.ttl", 30)
        with pytest.raises(ValidationError):
            client.set("auth.cache.l1.ttl", "thirty")


class TestMatrixUnits:
    def test_product_combinations__typed_axis__every_variant(self) -> None:
        runs = product_combinations([("a", (False, True)), ("prices.tier", ("gold", "silver"))])
        assert [format_run_id(r) for r in runs] == [
            "a=off,prices.tier=gold",
            "a=off,prices.tier=silver",
            "a=on,prices.tier=gold",
            "a=on,prices.tier=silver",
        ]


class TestCoverageUnits:
    def test_build_report__typed_all_variants_served__ok(self) -> None:
        report = build_report(
            {}, {"prices.tier": (0, 3)}, variants={"prices.tier": {"gold": 2, "silver": 1}}
        )
        assert report.passed

    def test_build_report__typed_variant_never_served__fails_naming_it(self) -> None:
        report = build_report(
            {}, {"prices.tier": (1, 3)}, variants={"prices.tier": {"gold": 4, "silver": 0}}
        )
        assert not report.passed
        assert report.describe_failures() == (
            "flag coverage failed for 1 flag(s): prices.tier (variant never served: silver)"
        )
        assert report.to_dict()["flags"][0]["variants"] == {"gold": 4, "silver": 0}


def test_plugin__flag_matrix_over_variants__one_run_per_variant(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
import pytest

TIERS = {"gold": "G", "silver": "S", "basic": "B"}

@pytest.mark.flag_matrix("auth.cache.l2", ("prices.tier", TIERS))
def test_tiers(flag_client):
    assert flag_client.value("prices.tier", "none", "acme") in TIERS.values()
    flag_client.is_enabled("auth.cache.l2")
"""
    )
    result = run(pytester, "-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*test_tiers?auth.cache.l2=on,prices.tier=silver? PASSED*"])


def test_plugin__flag_matrix_pairwise_with_variants__fails_clearly(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
import pytest

@pytest.mark.flag_matrix("a", ("prices.tier", {"gold": "G"}), pairwise=True)
def test_x(flag_client):
    pass
"""
    )
    result = run(pytester)
    result.stdout.fnmatch_lines(["*pairwise=True covers on/off flags only; prices.tier*"])


def test_plugin__coverage__typed_flag_covered_when_every_variant_served(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
import pytest

TIERS = {"gold": "G", "silver": "S", "basic": "B"}

@pytest.mark.flag_matrix(("prices.tier", TIERS))
def test_all_tiers(flag_client):
    flag_client.value("prices.tier", "none", "acme")

def test_ttl_one_variant(flag_client):
    flag_client.set("cache.ttl", "short", variants={"short": 30, "long": 300})
    assert flag_client.value("cache.ttl", 0, "acme") == 30
"""
    )
    result = run(pytester, "--flag-coverage", "--flag-coverage-report", "cov.json")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["flag coverage failed for 1 flag(s): cache.ttl (variant never served: long)"]
    )
    report = json.loads((pytester.path / "cov.json").read_text())
    flags = {f["key"]: f for f in report["flags"]}
    assert flags["prices.tier"]["status"] == "ok"
    assert flags["prices.tier"]["variants"] == {"basic": 1, "gold": 1, "silver": 1}
