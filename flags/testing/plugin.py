"""The flagrail pytest plugin, registered through the ``pytest11`` entry point.

* Fixture ``flag_client``: a fresh ``TestFlagClient``, also the process's default
  client for the test's duration (restored afterwards).
* Marker ``flag_matrix(*keys, pairwise=False)``: one run per on/off combination of
  ``keys`` (or a pairwise covering set), with ids like ``a=on,b=off``; each run's
  values are set on ``flag_client`` before any fixture of the test sees it. A key
  given as ``(key, {variant: value, ...})`` is a typed flag ranging over its
  variants (ids like ``prices.tier=gold``; not with ``pairwise=True``).
* ``--flag-coverage`` / ini ``flag_coverage = true``: after the run, a table of every
  declared or evaluated flag with its on and off evaluation counts; the run fails
  when a flag was never evaluated on, or never off. ``--flag-coverage-report FILE``
  also writes it as JSON. ``--flag-coverage-ignore PATTERN`` / ini
  ``flag_coverage_ignore`` exempt evaluated, undeclared flags. A typed flag
  (string, number, json) is covered when every variant was served at least once. Works under
  pytest-xdist: workers send their counts to the controller.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from flags.client import evaluation_counts
from flags.counts import variant_counts
from flags.declarations import declared_flags
from flags.testing.client import TestFlagClient, override_default_client
from flags.testing.coverage import (
    CoverageReport,
    build_report,
    declarations_to_dict,
    merge_counts,
    merge_variant_counts,
    subtract_counts,
    subtract_variant_counts,
)
from flags.testing.matrix import (
    format_run_id,
    pairwise_combinations,
    product_combinations,
    validate_matrix_keys,
)

MATRIX_FIXTURE = "_flagrail_matrix"
WORKER_OUTPUT_KEY = "flagrail_flag_coverage"
_PLUGIN_NAME = "flagrail-flag-coverage"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flagrail", "flagrail flag coverage")
    group.addoption(
        "--flag-coverage",
        action="store_true",
        default=None,
        help="fail the run when a declared or evaluated flag was never evaluated on, or never off",
    )
    group.addoption(
        "--flag-coverage-report",
        metavar="FILE.json",
        default=None,
        help="write the flag coverage report as JSON to FILE (implies --flag-coverage)",
    )
    group.addoption(
        "--flag-coverage-ignore",
        metavar="PATTERN",
        action="append",
        default=[],
        help="glob of evaluated, undeclared flag keys that flag coverage does not check "
        "(a declared flag only by its exact key); repeatable",
    )
    parser.addini(
        "flag_coverage", type="bool", default=False, help="turn on --flag-coverage for every run"
    )
    parser.addini(
        "flag_coverage_ignore",
        type="linelist",
        default=[],
        help="globs of evaluated, undeclared flag keys that flag coverage does not check",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "flag_matrix(*keys, pairwise=False): run the test once per on/off combination of the "
        "flags (every pair of values of every two flags with pairwise=True), set on flag_client",
    )
    if _coverage_enabled(config):
        config.pluginmanager.register(FlagCoveragePlugin(config), _PLUGIN_NAME)


def _coverage_enabled(config: pytest.Config) -> bool:
    if config.getoption("flag_coverage_report"):
        return True
    option = config.getoption("flag_coverage")
    if option is not None:
        return bool(option)
    return bool(config.getini("flag_coverage"))


# ---------------------------------------------------------------------- fixtures


@pytest.fixture
def flag_client(request: pytest.FixtureRequest) -> Iterator[TestFlagClient]:
    """A fresh in-memory ``TestFlagClient``, the process's default client during the test.

    ``flag_client.set("auth.cache.l2", True)`` turns a flag on for every tenant;
    ``flag_client.set("auth.cache.l2", False, tenant="acme")`` turns it off for one.
    Under ``@pytest.mark.flag_matrix`` it starts with the run's values.
    """
    client = TestFlagClient()
    typed = _matrix_variants(request.node)
    for key, value in _matrix_values(request.node).items():
        if key in typed:
            client.set(key, value, variants=typed[key])
        else:
            client.set(key, value)
    with override_default_client(client):
        yield client
    client.close()


@pytest.fixture(autouse=True)
def _flagrail_matrix(request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """This run's ``flag_matrix`` values (None outside a matrix test).

    Autouse so that a matrix test gets its ``flag_client`` (and default client)
    first, even when the test does not ask for ``flag_client`` itself.
    """
    values: dict[str, Any] | None = getattr(request, "param", None)
    if values is None:
        return None
    request.getfixturevalue("flag_client")
    return values


def _matrix_values(item: pytest.Item) -> dict[str, Any]:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return {}
    return dict(callspec.params.get(MATRIX_FIXTURE) or {})


def _matrix_variants(item: pytest.Item) -> dict[str, dict[str, Any]]:
    """The typed flags of the item's flag_matrix marker: ``{key: {variant: value}}``."""
    marker = item.get_closest_marker("flag_matrix")
    if marker is None:
        return {}
    return {arg[0]: dict(arg[1]) for arg in marker.args if isinstance(arg, tuple)}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    markers = list(metafunc.definition.iter_markers("flag_matrix"))
    if not markers:
        return
    if len(markers) > 1:
        pytest.fail(
            f"{metafunc.definition.nodeid}: flag_matrix is applied {len(markers)} times "
            "(function, class or module); list every flag in one marker",
            pytrace=False,
        )
    marker = markers[0]
    unknown = set(marker.kwargs) - {"pairwise"}
    if unknown:
        pytest.fail(
            f"{metafunc.definition.nodeid}: flag_matrix takes only pairwise=, "
            f"got {', '.join(sorted(unknown))}",
            pytrace=False,
        )
    axes: list[tuple[str, tuple[Any, ...]]] = []
    for arg in marker.args:
        if isinstance(arg, tuple) and len(arg) == 2 and isinstance(arg[1], Mapping):
            axes.append((arg[0], tuple(arg[1])))
        else:
            axes.append((arg, (False, True)))
    try:
        keys = validate_matrix_keys([key for key, _ in axes])
        pairwise = marker.kwargs.get("pairwise", False)
        typed = [key for key, values in axes if values != (False, True)]
        if pairwise and typed:
            raise ValueError(
                f"pairwise=True covers on/off flags only; {', '.join(typed)} range over variants"
            )
        runs = pairwise_combinations(keys) if pairwise else product_combinations(axes)
    except ValueError as exc:
        pytest.fail(f"{metafunc.definition.nodeid}: {exc}", pytrace=False)
    metafunc.parametrize(
        MATRIX_FIXTURE, runs, ids=[format_run_id(run) for run in runs], indirect=True
    )


# ---------------------------------------------------------------------- coverage


class FlagCoveragePlugin:
    """Collects flag coverage for one session and fails it when a flag lacks a side.

    On an xdist worker it only sends its counts and declarations to the controller;
    the controller (or a plain run) merges them with its own and reports.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        # Evaluations made before this session (an enclosing pytester run, imports
        # of the plugin's own process) are not this session's.
        self.baseline = evaluation_counts()
        self.variant_baseline = variant_counts()
        self.is_worker = hasattr(config, "workerinput")
        self.worker_counts: list[dict[str, tuple[int, int]]] = []
        self.worker_declared: dict[str, dict[str, Any]] = {}
        self.worker_variants: list[dict[str, dict[str, int]]] = []
        self.lost_workers: list[str] = []
        self.report: CoverageReport | None = None

    def _local(self) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[int, int]]]:
        declared = declarations_to_dict(declared_flags())
        counts = subtract_counts(evaluation_counts(), self.baseline)
        return declared, counts

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        output = getattr(node, "workeroutput", None) or {}
        data = output.get(WORKER_OUTPUT_KEY)
        if data is None:
            self.lost_workers.append(str(getattr(node, "gateway", node).id))
            return
        self.worker_counts.append({k: (v[0], v[1]) for k, v in data["counts"].items()})
        self.worker_declared.update(data["declared"])
        self.worker_variants.append(data.get("variants") or {})

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        declared, counts = self._local()
        if self.is_worker:
            workeroutput = self.config.workeroutput  # type: ignore[attr-defined]
            workeroutput[WORKER_OUTPUT_KEY] = {
                "counts": {key: list(value) for key, value in counts.items()},
                "declared": declared,
                "variants": subtract_variant_counts(variant_counts(), self.variant_baseline),
            }
            return
        if self.config.option.collectonly:
            return
        notes = [
            f"xdist worker {worker} sent no flag coverage (it crashed?)"
            for worker in self.lost_workers
        ]
        self.report = build_report(
            {**self.worker_declared, **declared},
            merge_counts(counts, *self.worker_counts),
            ignore_patterns=self._ignore_patterns(),
            notes=notes,
            variants=merge_variant_counts(
                subtract_variant_counts(variant_counts(), self.variant_baseline),
                *self.worker_variants,
            ),
        )
        path = self.config.getoption("flag_coverage_report")
        if path:
            target = self.config.invocation_params.dir / Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(self.report.to_dict(), indent=2) + "\n", encoding="utf-8")
        if not self.report.passed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _ignore_patterns(self) -> list[str]:
        patterns = list(self.config.getini("flag_coverage_ignore"))
        patterns.extend(self.config.getoption("flag_coverage_ignore") or [])
        return patterns

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        report = self.report
        if report is None:
            return
        failing = not report.passed
        terminalreporter.write_sep("=", "flag coverage", red=failing, green=not failing)
        for line in report.render_table():
            terminalreporter.write_line(line)
        for note in report.notes:
            terminalreporter.write_line(f"note: {note}", yellow=True)
        path = self.config.getoption("flag_coverage_report")
        if path:
            terminalreporter.write_line(f"flag coverage report written to {path}")
        if failing:
            terminalreporter.write_line(report.describe_failures(), red=True, bold=True)
