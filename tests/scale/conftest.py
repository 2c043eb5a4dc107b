"""Fixtures of throwaway Redis topologies: Sentinel (master, replica, three sentinels)
and Cluster (three masters with a replica each). Each test gets its own, because
failover tests kill nodes; both start in a few seconds. Under ``CI=true`` a missing
``redis-server``/``redis-cli`` is a failure, not a skip."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from flags.testing.redis_server import find_redis_server

from .topology import ClusterSet, SentinelSet

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _require(cli: bool) -> None:
    missing = find_redis_server() is None or (cli and shutil.which("redis-cli") is None)
    if missing:
        message = "redis-server" + (" and redis-cli" if cli else "") + " are needed"
        if IN_CI:
            pytest.fail(f"{message}, and under CI=true that is a failure, not a skip")
        pytest.skip(message)


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    """A fresh master + replica + three sentinels; ``.url`` is its redis+sentinel URL."""
    _require(cli=False)
    with SentinelSet() as topology:
        yield topology


@pytest.fixture
def cluster_set() -> Iterator[ClusterSet]:
    """A fresh three-master cluster with a replica per master; ``.url`` names it."""
    _require(cli=True)
    with ClusterSet() as topology:
        yield topology
