"""Fixtures for approvals: a migrated database with a flag, the change-request store,
the service, and principals of distinct people."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.service.approvals import ApprovalService
from api.service.principal import Principal
from flags.model import Role, StateChange
from flags.store.change_requests import ChangeRequestStore
from flags.store.sql import SqlFlagStore
from tests.approvals.people import ENV, FLAG, token


@pytest.fixture
def flags(database_url: str) -> Iterator[SqlFlagStore]:
    store = SqlFlagStore(database_url)
    try:
        store.create_flag(FLAG, actor="seed")
        store.update_state(FLAG, ENV, StateChange(enabled=True, rollout=10), actor="seed")
        yield store
    finally:
        store.close()


@pytest.fixture
def requests(flags: SqlFlagStore) -> ChangeRequestStore:
    return ChangeRequestStore(flags)


@pytest.fixture
def service(flags: SqlFlagStore, requests: ChangeRequestStore) -> ApprovalService:
    return ApprovalService(flags, requests)


@pytest.fixture
def admin() -> Principal:
    return token("admin1", Role.ADMIN)


@pytest.fixture
def gated(service: ApprovalService, admin: Principal) -> ApprovalService:
    """Production gated with one approval."""
    service.set_policy(admin, ENV, 1)
    return service
