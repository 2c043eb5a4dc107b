"""The console's health and plans pages over the service: ``AdminService.counter_totals``
and ``AdminService.recent_plans``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from api.service import AdminService, Principal
from flags.errors import ForbiddenError
from flags.model import Role


def _service(client: TestClient) -> AdminService:
    return client.app.state.service  # type: ignore[attr-defined,no-any-return]


def test_counter_totals__scoped_principal__own_environment_only(console_app: TestClient) -> None:
    service = _service(console_app)
    now = datetime.now(UTC).replace(microsecond=0)
    service.telemetry.record_metrics(  # type: ignore[union-attr]
        "staging", {}, {"payments.cache.l2": {"hits": 600.0, "corrupt_reads": 5.0}}, at=now
    )
    staging = Principal(None, "user:s", Role.READER, ("staging",))
    since = now - timedelta(minutes=5)
    totals = service.counter_totals(staging, "payments.cache.l2", "staging", since)
    assert totals == {"hits": 600.0, "corrupt_reads": 5.0}
    with pytest.raises(ForbiddenError):
        service.counter_totals(staging, "payments.cache.l2", "production", since)

    page = console_app.get("/console/health", follow_redirects=False)
    assert page.status_code == 303  # no session yet


def test_health_page__rates_from_the_service(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    service = _service(console_app)
    service.telemetry.record_metrics(  # type: ignore[union-attr]
        "staging", {}, {"payments.cache.l2": {"hits": 600.0}}
    )
    logged_in("rita")
    page = console_app.get("/console/health")
    assert page.status_code == 200
    assert "payments.cache.l2" in page.text and "120.0" in page.text  # 600 in 5 minutes


def test_plans_page__no_flag__every_flags_plans_newest_first(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    service = _service(console_app)
    admin = Principal(None, "user:alice", Role.ADMIN)
    for key in ("checkout", "search.v2"):
        service.create_plan(admin, key, {"environment": "staging", "stages": [{"rollout": 20}]})
    beta_only = Principal(None, "user:p", Role.READER, ("production",))
    assert service.recent_plans(beta_only) == []
    assert [p.flag for p in service.recent_plans(admin)] == ["search.v2", "checkout"]
    patterned = Principal("t", "t", Role.READER, None, ("check*",))
    assert [p.flag for p in service.recent_plans(patterned)] == ["checkout"]

    logged_in("rita")
    page = console_app.get("/console/plans")
    assert page.status_code == 200
    assert page.text.index("/console/flags/search.v2") < page.text.index("/console/flags/checkout")
