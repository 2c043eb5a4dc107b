"""The issue's acceptance test: a real UnleashClient polling a real flagrail server
answers exactly what flagrail's own FlagClient answers, for 10,000 tenants per flag."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from unleash_server import (
    ON,
    SHAPES,
    STAGING_ONLY,
    TENANTS,
    FlagrailServer,
    populate,
)
from UnleashClient import UnleashClient
from UnleashClient.utils import InstanceAllowType

from flags.client import FlagClient
from flags.store.telemetry import TelemetryStore
from flags.testing import wait_for
from flags.unleash.mapping import TENANT_FIELD


@pytest.fixture
def unleash(flagrail_server: FlagrailServer, tmp_path: Path) -> Iterator[UnleashClient]:
    """The official Python SDK, polling every second with the production client token."""
    populate(flagrail_server.store)
    client = UnleashClient(
        url=flagrail_server.unleash_url,
        app_name="agreement-test",
        environment="production",
        instance_id=f"test-{uuid.uuid4().hex[:8]}",
        refresh_interval=1,
        metrics_interval=60,
        custom_headers={"Authorization": flagrail_server.production},
        cache_directory=str(tmp_path),
        request_timeout=5,
        request_retries=0,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    client.initialize_client()
    try:
        yield client
    finally:
        client.destroy()


def unleash_says(client: UnleashClient, key: str, tenant: str | None) -> bool:
    return client.is_enabled(key, {} if tenant is None else {TENANT_FIELD: tenant})


def test_unleash_client__every_shape_10000_tenants__agrees_with_flag_client(
    flagrail_server: FlagrailServer, unleash: UnleashClient
) -> None:
    """UnleashClient over /api/client/features == FlagClient over /sdk/v1/snapshot."""
    # Given: UnleashClient has fetched production, and a FlagClient holds its snapshot
    assert set(unleash.feature_definitions()) == {*SHAPES, STAGING_ONLY}
    flags = FlagClient.from_snapshot(flagrail_server.sdk_snapshot())
    # When: both answer for every flag, 10,000 tenants each and no tenant
    mismatches = [
        (key, tenant)
        for key in [*SHAPES, STAGING_ONLY, "archived"]
        for tenant in [None, *TENANTS]
        if unleash_says(unleash, key, tenant) is not flags.is_enabled(key, tenant)
    ]
    # Then: they never disagree, and the shapes really do differ between tenants
    assert mismatches == []
    on_counts = {key: sum(flags.is_enabled(key, t) for t in TENANTS) for key in SHAPES}
    assert on_counts["rollout-0"] == 0 and on_counts["rollout-100"] == len(TENANTS)
    assert 0 < on_counts["rollout-1"] < on_counts["rollout-50"] < on_counts["rollout-99"]
    assert on_counts["tenants-on"] == len(ON) and on_counts["killed"] == 0
    assert not any(unleash_says(unleash, STAGING_ONLY, t) for t in ("staging-secret", None))


def test_unleash_client__flag_killed__off_after_its_next_poll(
    flagrail_server: FlagrailServer, unleash: UnleashClient
) -> None:
    """A kill reaches a polling Unleash SDK within a poll interval (1 s here)."""
    assert unleash_says(unleash, "rollout-100", "tenant-1") is True
    flagrail_server.store.kill("rollout-100", ["production"], reason="incident", actor="test")
    wait_for(
        lambda: unleash_says(unleash, "rollout-100", "tenant-1") is False,
        10.0,
        "UnleashClient to see the kill",
    )
    assert not any(unleash_says(unleash, "rollout-100", t) for t in TENANTS[:2000])
    assert unleash_says(unleash, "plain-on", "tenant-1") is True  # the others are untouched


def test_unleash_client__metrics_on_close__feed_flagrail_evaluation_counts(
    flagrail_server: FlagrailServer, unleash: UnleashClient
) -> None:
    """UnleashClient's metrics flush (on destroy) lands in flagrail's per-flag counts:
    the SDK telemetry store (what the admin API reports) and the Prometheus counter."""
    labels = {"environment": "production", "flag": "rollout-50", "result": "on"}
    before = REGISTRY.get_sample_value("flagrail_unleash_evaluations_total", labels) or 0.0
    on = sum(unleash_says(unleash, "rollout-50", t) for t in TENANTS[:1000])
    unleash.destroy()  # flushes the metrics bucket to POST /api/client/metrics
    after = REGISTRY.get_sample_value("flagrail_unleash_evaluations_total", labels) or 0.0
    assert 0 < on < 1000
    assert after - before == on
    facts = TelemetryStore(flagrail_server.store.engine).flag_environments("rollout-50")
    assert facts["production"]["evaluations_on"] == on
    assert facts["production"]["evaluations_off"] == 1000 - on


def test_client_features__production_token__payload_holds_nothing_of_staging(
    flagrail_server: FlagrailServer,
) -> None:
    """The production token's payload has production states only, staging's secrets never."""
    populate(flagrail_server.store)
    response = httpx.get(
        f"{flagrail_server.url}/api/client/features",
        headers={"Authorization": flagrail_server.production},
    )
    assert response.status_code == 200
    assert b"staging-secret" not in response.content
    features = {f["name"]: f for f in json.loads(response.content)["features"]}
    assert features[STAGING_ONLY]["enabled"] is False
    assert features["rollout-50"]["strategies"][0]["parameters"]["rollout"] == "50"
    denied = httpx.get(
        f"{flagrail_server.url}/api/client/features",
        params={"environment": "staging"},
        headers={"Authorization": flagrail_server.production},
    )
    assert denied.status_code == 403
    assert b"staging-secret" not in denied.content
