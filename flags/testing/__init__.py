"""Test tooling for code that uses flagrail: the pytest plugin and throwaway servers.

The pytest plugin itself (``flags.testing.plugin``) is loaded by pytest through the
``pytest11`` entry point; nothing here imports pytest.
"""

from flags.testing.client import TestFlagClient, override_default_client
from flags.testing.coverage import CoverageReport, CoverageStatus, FlagCoverage, build_report
from flags.testing.matrix import all_combinations, pairwise_combinations, pairwise_run_count
from flags.testing.waiting import wait_for

__all__ = [
    "CoverageReport",
    "CoverageStatus",
    "FlagCoverage",
    "TestFlagClient",
    "all_combinations",
    "build_report",
    "override_default_client",
    "pairwise_combinations",
    "pairwise_run_count",
    "wait_for",
]
