"""flags.openfeature: FlagrailProvider through the real openfeature-sdk API."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent, ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import Reason as OFReason
from openfeature.provider import ProviderStatus

from flags.bucketing import in_rollout
from flags.client import FlagClient
from flags.model import FlagState, Snapshot
from flags.openfeature import FlagrailProvider, changed_flags

STATES = {
    "killed": FlagState(enabled=True, rollout=100, killed=True, version=4),
    "disabled": FlagState(enabled=False, rollout=100, version=2),
    "targeted": FlagState(
        enabled=True,
        rollout=0,
        tenants_on=frozenset({"acme"}),
        tenants_off=frozenset({"globex"}),
        version=3,
    ),
    "half": FlagState(enabled=True, rollout=50, version=1),
    "everyone": FlagState(enabled=True, rollout=100, version=1),
}


def tenant_in_half(wanted: bool) -> str:
    return next(t for t in (f"t-{i}" for i in range(1000)) if in_rollout("half", t, 50) is wanted)


@pytest.fixture
def flag_client() -> FlagClient:
    return FlagClient.from_snapshot(Snapshot("production", 10, dict(STATES)))


@pytest.fixture
def domain() -> Iterator[str]:
    """An OpenFeature domain of this test's own; every provider is cleared afterwards."""
    yield f"flagrail-test-{uuid.uuid4().hex[:8]}"
    api.clear_providers()


@pytest.fixture
def client(flag_client: FlagClient, domain: str) -> OpenFeatureClient:
    api.set_provider_and_wait(FlagrailProvider(flag_client), domain)
    return api.get_client(domain)


def ctx(tenant: str | None = None, **attributes: object) -> EvaluationContext:
    return EvaluationContext(targeting_key=tenant, attributes=attributes)  # type: ignore[arg-type]


class TestBooleanResolution:
    def test_get_boolean_value__targeting_key__the_tenant_answer(
        self, client: OpenFeatureClient
    ) -> None:
        assert client.get_boolean_value("targeted", False, ctx("acme")) is True
        assert client.get_boolean_value("targeted", True, ctx("globex")) is False
        assert client.get_boolean_value("half", False, ctx(tenant_in_half(True))) is True
        assert client.get_boolean_value("half", True, ctx(tenant_in_half(False))) is False
        assert client.get_boolean_value("everyone", False) is True  # no tenant at all

    def test_get_boolean_value__tenant_id_attribute_without_targeting_key__used_as_tenant(
        self, client: OpenFeatureClient
    ) -> None:
        assert client.get_boolean_value("targeted", False, ctx(tenantId="acme")) is True
        # the targeting key wins over the attribute
        assert client.get_boolean_value("targeted", True, ctx("globex", tenantId="acme")) is False

    @pytest.mark.parametrize(
        ("flag", "tenant", "reason", "value", "variant"),
        [
            ("killed", "acme", OFReason.DISABLED, False, "off"),
            ("disabled", "acme", OFReason.DISABLED, False, "off"),
            ("targeted", "acme", OFReason.TARGETING_MATCH, True, "on"),
            ("targeted", "globex", OFReason.TARGETING_MATCH, False, "off"),
            ("half", None, OFReason.SPLIT, False, "off"),
            ("everyone", "acme", OFReason.SPLIT, True, "on"),
        ],
        ids=["killed", "disabled", "tenant_on", "tenant_off", "rollout-off", "rollout-on"],
    )
    def test_get_boolean_details__each_flagrail_reason__mapped_reason(
        self,
        client: OpenFeatureClient,
        flag: str,
        tenant: str | None,
        reason: OFReason,
        value: bool,
        variant: str,
    ) -> None:
        details = client.get_boolean_details(flag, not value, ctx(tenant))
        assert (details.value, details.reason, details.variant) == (value, reason, variant)
        assert details.error_code is None
        assert details.flag_metadata["version"] == STATES[flag].version

    def test_get_boolean_details__rollout_tenant__split_with_flagrail_reason_in_metadata(
        self, client: OpenFeatureClient
    ) -> None:
        details = client.get_boolean_details("half", False, ctx(tenant_in_half(True)))
        assert (details.value, details.reason) == (True, OFReason.SPLIT)
        assert details.flag_metadata["reason"] == "rollout"

    @pytest.mark.parametrize("default", [False, True])
    def test_get_boolean_details__missing_flag__error_flag_not_found_and_the_default(
        self, client: OpenFeatureClient, default: bool
    ) -> None:
        details = client.get_boolean_details("no-such-flag", default, ctx("acme"))
        assert details.value is default
        assert details.reason == OFReason.ERROR
        assert details.error_code == ErrorCode.FLAG_NOT_FOUND

    @pytest.mark.parametrize("tenant", ["x" * 201, 42, "a\x00b"], ids=["long", "int", "control"])
    def test_get_boolean_details__invalid_tenant__error_invalid_context_and_the_default(
        self, client: OpenFeatureClient, tenant: object
    ) -> None:
        details = client.get_boolean_details("everyone", False, ctx(tenantId=tenant))
        assert (details.value, details.reason) == (False, OFReason.ERROR)
        assert details.error_code == ErrorCode.INVALID_CONTEXT

    def test_get_string_integer_float_object__boolean_flag__type_mismatch_and_the_default(
        self, client: OpenFeatureClient
    ) -> None:
        """flagrail flags are boolean; any other type gets the default and TYPE_MISMATCH."""
        cases = [
            client.get_string_details("everyone", "fallback", ctx("acme")),
            client.get_integer_details("everyone", 7, ctx("acme")),
            client.get_float_details("everyone", 0.5, ctx("acme")),
            client.get_object_details("everyone", {"a": 1}, ctx("acme")),
        ]
        assert [d.value for d in cases] == ["fallback", 7, 0.5, {"a": 1}]
        assert {d.error_code for d in cases} == {ErrorCode.TYPE_MISMATCH}
        assert client.get_string_value("everyone", "fallback") == "fallback"

    def test_get_boolean_details__client_without_flags__provider_not_ready_and_the_default(
        self, domain: str
    ) -> None:
        empty = FlagClient(None, None, "production")  # never receives a snapshot
        with pytest.raises(ProviderNotReadyError):
            api.set_provider_and_wait(FlagrailProvider(empty, ready_timeout=0.01), domain)
        client = api.get_client(domain)
        details = client.get_boolean_details("everyone", True, ctx("acme"))
        assert details.value is True
        assert details.reason == OFReason.ERROR
        assert details.error_code == ErrorCode.PROVIDER_NOT_READY

    def test_metadata__provider__named_flagrail(self, client: OpenFeatureClient) -> None:
        assert api.get_provider_metadata(client.domain).name == "flagrail"


class TestEvents:
    def test_on_change__a_flag_changed__configuration_changed_naming_it(
        self, client: OpenFeatureClient, flag_client: FlagClient
    ) -> None:
        received: list[EventDetails] = []
        arrived = threading.Event()

        def handler(details: EventDetails) -> None:
            received.append(details)
            arrived.set()

        client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, handler)
        flags = dict(STATES)
        flags["half"] = FlagState(enabled=True, rollout=100, version=2)
        flags["new-flag"] = FlagState(enabled=True, rollout=100, version=1)
        del flags["disabled"]
        flag_client.load_snapshot(Snapshot("production", 11, flags), source="test")
        assert arrived.wait(5.0), "no PROVIDER_CONFIGURATION_CHANGED within 5 s"
        assert received[0].flags_changed == ["disabled", "half", "new-flag"]
        assert received[0].metadata["version"] == 11
        assert client.get_boolean_value("half", False, ctx(tenant_in_half(False))) is True

    def test_on_change__client_ready_later__provider_turns_ready(self, domain: str) -> None:
        """A provider whose client had no flags yet becomes READY with the first snapshot."""
        late = FlagClient(None, None, "production")
        with pytest.raises(ProviderNotReadyError):
            api.set_provider_and_wait(FlagrailProvider(late, ready_timeout=0.01), domain)
        client = api.get_client(domain)
        assert client.get_provider_status() == ProviderStatus.ERROR
        ready = threading.Event()
        client.add_handler(ProviderEvent.PROVIDER_READY, lambda _details: ready.set())
        late.load_snapshot(Snapshot("production", 1, dict(STATES)), source="test")
        assert ready.wait(5.0), "no PROVIDER_READY within 5 s"
        assert client.get_provider_status() == ProviderStatus.READY
        assert client.get_boolean_value("everyone", False, ctx("acme")) is True

    def test_shutdown__provider__stops_emitting_on_client_changes(
        self, flag_client: FlagClient
    ) -> None:
        """After shutdown the provider no longer listens; the client stays usable."""
        events: list[tuple[ProviderEvent, ProviderEventDetails]] = []
        provider = FlagrailProvider(flag_client)
        provider.attach(lambda _provider, event, details: events.append((event, details)))
        provider.initialize(EvaluationContext())
        changed = dict(STATES, everyone=FlagState(version=9))
        flag_client.load_snapshot(Snapshot("production", 11, changed), source="test")
        assert [(e, d.flags_changed) for e, d in events] == [
            (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, ["everyone"])
        ]
        provider.shutdown()
        flag_client.load_snapshot(Snapshot("production", 12, dict(STATES)), source="test")
        assert len(events) == 1
        assert flag_client.is_enabled("everyone", "acme") is True

    def test_on_change__same_states_again__no_event(self, flag_client: FlagClient) -> None:
        events: list[ProviderEvent] = []
        provider = FlagrailProvider(flag_client)
        provider.attach(lambda _provider, event, _details: events.append(event))
        provider.initialize(EvaluationContext())
        flag_client.load_snapshot(Snapshot("production", 11, dict(STATES)), source="test")
        assert events == []
        provider.shutdown()


def test_changed_flags__added_removed_and_changed__sorted_keys() -> None:
    before = Snapshot("p", 1, {"a": FlagState(), "b": FlagState(enabled=True)})
    after = Snapshot("p", 2, {"b": FlagState(), "c": FlagState()})
    assert changed_flags(before, after) == ["a", "b", "c"]
    assert changed_flags(after, after) == []
    assert changed_flags(None, after) == ["b", "c"]
