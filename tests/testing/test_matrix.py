"""Tests of flags.testing.matrix: full and pairwise on/off combinations."""

from __future__ import annotations

import itertools

import pytest

from flags.errors import ValidationError
from flags.testing.matrix import (
    all_combinations,
    format_run_id,
    pairwise_combinations,
    pairwise_run_count,
    validate_matrix_keys,
)

ALL_PAIRS = {(a, b) for a in (False, True) for b in (False, True)}


def keys_of(n: int) -> list[str]:
    return [f"flag.{i}" for i in range(n)]


def uncovered_pairs(runs: list[dict[str, bool]], keys: list[str]) -> list[tuple[str, str, set]]:
    missing = []
    for a, b in itertools.combinations(keys, 2):
        seen = {(run[a], run[b]) for run in runs}
        if seen != ALL_PAIRS:
            missing.append((a, b, ALL_PAIRS - seen))
    return missing


class TestAllCombinations:
    @pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
    def test_all_combinations__n_flags__two_to_the_n_distinct_runs(self, n: int) -> None:
        """Every on/off combination appears exactly once."""
        runs = all_combinations(keys_of(n))
        assert len(runs) == 2**n
        assert len({tuple(run.values()) for run in runs}) == 2**n

    def test_all_combinations__two_flags__all_off_first_in_product_order(self) -> None:
        runs = all_combinations(["a", "b"])
        assert [format_run_id(run) for run in runs] == [
            "a=off,b=off",
            "a=off,b=on",
            "a=on,b=off",
            "a=on,b=on",
        ]


class TestPairwise:
    @pytest.mark.parametrize("n", [*range(1, 21), 35, 36, 56, 57])
    def test_pairwise__n_flags__every_pair_of_values_of_every_two_flags(self, n: int) -> None:
        """Strength 2: on/on, on/off, off/on and off/off for each two flags."""
        keys = keys_of(n)
        runs = pairwise_combinations(keys)
        assert len(runs) == pairwise_run_count(n)
        assert all(list(run) == keys for run in runs)
        assert uncovered_pairs(runs, keys) == []
        for key in keys:  # every flag is seen on and off
            assert {run[key] for run in runs} == {False, True}

    def test_pairwise_run_count__two_to_ten_flags__known_optimum(self) -> None:
        """The sizes of optimal binary covering arrays (Kleitman-Spencer), as the docs state."""
        counts = {n: pairwise_run_count(n) for n in range(2, 11)}
        assert counts == {2: 4, 3: 4, 4: 5, 5: 6, 6: 6, 7: 6, 8: 6, 9: 6, 10: 6}
        assert [pairwise_run_count(n) for n in (11, 15, 16, 35, 36)] == [7, 7, 8, 8, 9]

    def test_pairwise_run_count__one_less_run__cannot_cover(self) -> None:
        """No N-1 runs cover every pair for n=4 (exhaustive): the count is the minimum."""
        keys = keys_of(4)
        rows = list(itertools.product((False, True), repeat=4))
        n_runs = pairwise_run_count(4) - 1
        for chosen in itertools.combinations(rows, n_runs):
            runs = [dict(zip(keys, row, strict=True)) for row in chosen]
            assert uncovered_pairs(runs, keys) != []

    def test_pairwise__any_flags__first_run_all_on(self) -> None:
        for n in (1, 2, 5, 10):
            assert all(pairwise_combinations(keys_of(n))[0].values())

    def test_pairwise__same_keys__same_runs(self) -> None:
        assert pairwise_combinations(keys_of(7)) == pairwise_combinations(keys_of(7))

    def test_pairwise_run_count__zero_flags__value_error(self) -> None:
        with pytest.raises(ValueError, match="at least one flag"):
            pairwise_run_count(0)


class TestValidateMatrixKeys:
    def test_validate_matrix_keys__valid__list_in_order(self) -> None:
        assert validate_matrix_keys(("b.x", "a.y")) == ["b.x", "a.y"]

    def test_validate_matrix_keys__empty__value_error(self) -> None:
        with pytest.raises(ValueError, match="at least one flag key"):
            validate_matrix_keys(())

    def test_validate_matrix_keys__duplicate__value_error_naming_it(self) -> None:
        with pytest.raises(ValueError, match=r"'a\.b' appears twice"):
            validate_matrix_keys(("a.b", "c", "a.b"))

    def test_validate_matrix_keys__malformed__validation_error(self) -> None:
        with pytest.raises(ValidationError, match="flag_matrix key"):
            validate_matrix_keys(("Not A Key",))


def test_format_run_id__values__key_equals_on_or_off_in_order() -> None:
    values = {"auth.cache.l1": True, "auth.cache.l2": False}
    assert format_run_id(values) == "auth.cache.l1=on,auth.cache.l2=off"
