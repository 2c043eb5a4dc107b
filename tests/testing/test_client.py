"""Tests of flags.testing.client: the settable TestFlagClient and the default-client swap.

Every flag key here is evaluated both on and off, so this module passes its own
``--flag-coverage``.
"""

from __future__ import annotations

import pytest

from flags.client import FlagClient, get_default_client, set_default_client
from flags.errors import ValidationError
from flags.model import FlagState, Reason
from flags.testing import TestFlagClient, override_default_client


class TestSet:
    def test_fresh_client__unknown_flag__caller_default_with_reason_missing(self) -> None:
        client = TestFlagClient()
        assert client.evaluate("unknown.flag").reason is Reason.MISSING
        assert client.is_enabled("unknown.flag") is False
        assert client.is_enabled("unknown.flag", default=True) is True
        assert client.counts()["unknown.flag"] == (2, 1)

    def test_set__true__on_for_every_tenant(self) -> None:
        client = TestFlagClient()
        state = client.set("auth.cache.l2", True)
        assert (state.enabled, state.rollout, state.killed) == (True, 100, False)
        assert client.is_enabled("auth.cache.l2")
        assert client.is_enabled("auth.cache.l2", tenant="acme")
        assert client.is_enabled("auth.cache.l2", tenant="globex")

    def test_set__false__off_for_every_tenant(self) -> None:
        client = TestFlagClient({"auth.cache.l2": True})
        client.set("auth.cache.l2", False)
        assert client.evaluate("auth.cache.l2").reason is Reason.DISABLED
        assert not client.is_enabled("auth.cache.l2", tenant="acme")

    def test_set__tenant_off_on_a_flag_on__only_that_tenant_off(self) -> None:
        client = TestFlagClient()
        client.set("auth.cache.l2", True)
        client.set("auth.cache.l2", False, tenant="acme")
        assert client.evaluate("auth.cache.l2", tenant="acme").reason is Reason.TENANT_OFF
        assert client.is_enabled("auth.cache.l2", tenant="globex")
        assert client.is_enabled("auth.cache.l2")

    def test_set__tenant_on_a_flag_off__only_that_tenant_on(self) -> None:
        client = TestFlagClient({"billing.v2": False})
        client.set("billing.v2", True, tenant="acme")
        assert client.evaluate("billing.v2", tenant="acme").reason is Reason.TENANT_ON
        assert not client.is_enabled("billing.v2", tenant="globex")
        assert not client.is_enabled("billing.v2")

    def test_set__tenant_on_an_unknown_flag__others_off(self) -> None:
        client = TestFlagClient()
        client.set("search.beta", True, tenant="acme")
        assert client.is_enabled("search.beta", tenant="acme")
        assert not client.is_enabled("search.beta", tenant="globex", default=True)

    def test_set__tenant_moved_between_lists__last_set_wins(self) -> None:
        client = TestFlagClient()
        client.set("search.beta", True, tenant="acme")
        state = client.set("search.beta", False, tenant="acme")
        assert "acme" in state.tenants_off and "acme" not in state.tenants_on
        assert not client.is_enabled("search.beta", tenant="acme")

    def test_set__everyone_after_tenants__clears_tenant_overrides(self) -> None:
        client = TestFlagClient()
        client.set("search.beta", False, tenant="acme")
        state = client.set("search.beta", True)
        assert state.tenants_off == frozenset()
        assert client.is_enabled("search.beta", tenant="acme")

    def test_set__every_call__new_snapshot_version_and_on_change(self) -> None:
        client = TestFlagClient()
        seen: list[int] = []
        client.on_change(lambda _client, snapshot: seen.append(snapshot.version))
        first = client.set("auth.cache.l1", True)
        second = client.set("auth.cache.l1", False)
        assert seen == [1, 2]
        assert client.version == 2
        assert (first.version, second.version) == (1, 2)

    def test_set__malformed_key__validation_error(self) -> None:
        with pytest.raises(ValidationError, match="key must match"):
            TestFlagClient().set("Not A Key", True)

    def test_set__malformed_tenant__validation_error(self) -> None:
        with pytest.raises(ValidationError, match="tenant"):
            TestFlagClient().set("auth.cache.l1", True, tenant="")

    def test_set__value_not_bool__type_error_naming_flag(self) -> None:
        client = TestFlagClient({"auth.cache.l1": True})
        with pytest.raises(TypeError, match=r"auth\.cache\.l1.*must be a bool, got 1"):
            client.set("auth.cache.l1", 1)


class TestStateAndReset:
    def test_set_state__partial_rollout__served_as_given(self) -> None:
        client = TestFlagClient()
        client.set_state("search.beta", FlagState(enabled=True, rollout=0, tenants_on={"a"}))
        assert client.is_enabled("search.beta", tenant="a")
        assert not client.is_enabled("search.beta", tenant="b")

    def test_reset__after_set__flags_forgotten_counts_kept(self) -> None:
        client = TestFlagClient({"auth.cache.l1": True})
        assert client.is_enabled("auth.cache.l1")
        client.reset()
        assert client.state("auth.cache.l1") is None
        assert client.evaluate("auth.cache.l1").reason is Reason.MISSING
        assert client.counts()["auth.cache.l1"] == (1, 1)

    def test_constructor__flags_mapping__initial_states_at_version_zero(self) -> None:
        client = TestFlagClient({"auth.cache.l1": True, "auth.cache.l2": False}, environment="ci")
        assert client.environment == "ci"
        assert client.version == 0
        assert client.is_enabled("auth.cache.l1") and not client.is_enabled("auth.cache.l2")
        assert client.stats()["source"] == "test"

    def test_test_flag_client__is_a_flag_client__injectable(self) -> None:
        assert isinstance(TestFlagClient(), FlagClient)


class TestOverrideDefaultClient:
    def test_override_default_client__inside__client_is_default(self) -> None:
        client = TestFlagClient()
        with override_default_client(client) as active:
            assert active is client
            assert get_default_client() is client

    def test_override_default_client__after_error__previous_restored(self) -> None:
        outer = TestFlagClient()
        previous = set_default_client(outer)
        try:
            with pytest.raises(RuntimeError), override_default_client(TestFlagClient()):
                raise RuntimeError("boom")
            assert get_default_client() is outer
        finally:
            set_default_client(previous)


class TestFixture:
    def test_flag_client__fixture__fresh_and_the_default_client(
        self, flag_client: TestFlagClient
    ) -> None:
        assert flag_client.flag_keys() == []
        assert get_default_client() is flag_client

    @pytest.mark.flag_matrix("auth.cache.l1", "auth.cache.l2")
    def test_flag_matrix__in_this_suite__values_match_the_id(
        self, flag_client: TestFlagClient, request: pytest.FixtureRequest
    ) -> None:
        expected = dict(part.split("=") for part in request.node.callspec.id.split(","))
        for key, word in expected.items():
            assert flag_client.is_enabled(key) is (word == "on")
