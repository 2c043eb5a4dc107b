"""SDK fixtures: deployments (database, tokens, live servers) and SDK worker processes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from .harness import Deployment, Worker


@pytest.fixture
def deployment(database_url: str) -> Iterator[Deployment]:
    d = Deployment(database_url)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def sqlite_deployment(sqlite_url: str) -> Iterator[Deployment]:
    d = Deployment(sqlite_url)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def workers() -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Worker:
        worker = Worker(list(args), env)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:  # close every stdin first: they shut down in parallel
            if worker.proc.stdin is not None and worker.proc.poll() is None:
                with contextlib.suppress(OSError):
                    worker.proc.stdin.close()
        for worker in started:
            worker.stop()
