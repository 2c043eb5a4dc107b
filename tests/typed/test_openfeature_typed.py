"""FlagrailProvider with typed flags: every OpenFeature type, reasons, variants, mismatches."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason as OFReason

from flags.client import FlagClient
from flags.model import FlagState, FlagType, Snapshot, Variant
from flags.openfeature import FlagrailProvider


def typed(flag_type: FlagType, off: Any, on: Any, **extra: Any) -> FlagState:
    fields: dict[str, Any] = {
        "enabled": True,
        "rollout": 100,
        "version": 5,
        "type": flag_type,
        "variants": (Variant("safe", off), Variant("main", on), Variant("pin", on)),
        "off_variant": "safe",
        "on_variant": "main",
        "tenant_variants": (("vip", "pin"),),
    }
    fields.update(extra)
    return FlagState(**fields).check_variants()


STATES = {
    "bool": FlagState(enabled=True, rollout=100, version=2),
    "tier": typed(FlagType.STRING, "basic", "gold", split=(("main", 1000),)),
    "ttl": typed(FlagType.NUMBER, 30, 300),
    "ratio": typed(FlagType.NUMBER, 0.25, 0.75),
    "layout": typed(FlagType.JSON, {"cols": 1}, {"cols": 3}),
    "scalar": typed(FlagType.JSON, "a", "b"),
    "killed-ttl": typed(FlagType.NUMBER, 30, 300, killed=True),
}


@pytest.fixture
def client() -> Iterator[OpenFeatureClient]:
    domain = f"flagrail-typed-{uuid.uuid4().hex[:8]}"
    flag_client = FlagClient.from_snapshot(Snapshot("production", 3, dict(STATES)))
    api.set_provider_and_wait(FlagrailProvider(flag_client), domain)
    yield api.get_client(domain)
    api.clear_providers()


def ctx(tenant: str | None = "acme") -> EvaluationContext:
    return EvaluationContext(targeting_key=tenant)


def test_string__split__value_variant_and_reason(client: OpenFeatureClient) -> None:
    details = client.get_string_details("tier", "none", ctx())
    assert (details.value, details.variant, details.reason) == ("gold", "main", OFReason.SPLIT)


def test_string__pinned__targeting_match(client: OpenFeatureClient) -> None:
    details = client.get_string_details("tier", "none", ctx("vip"))
    assert (details.value, details.variant, details.reason) == (
        "gold",
        "pin",
        OFReason.TARGETING_MATCH,
    )


def test_integer__number_flag__value(client: OpenFeatureClient) -> None:
    details = client.get_integer_details("ttl", 1, ctx())
    assert (details.value, details.variant, details.reason) == (300, "main", OFReason.SPLIT)


def test_integer__fractional_number__type_mismatch(client: OpenFeatureClient) -> None:
    details = client.get_integer_details("ratio", 1, ctx())
    assert (details.value, details.error_code) == (1, ErrorCode.TYPE_MISMATCH)


def test_float__number_flag__float_value(client: OpenFeatureClient) -> None:
    assert client.get_float_value("ratio", 0.0, ctx()) == 0.75
    assert client.get_float_value("ttl", 0.0, ctx()) == 300.0


def test_object__json_flag__value(client: OpenFeatureClient) -> None:
    details = client.get_object_details("layout", {}, ctx())
    assert (details.value, details.variant) == ({"cols": 3}, "main")


def test_object__json_scalar__type_mismatch(client: OpenFeatureClient) -> None:
    details = client.get_object_details("scalar", {"d": 1}, ctx())
    assert (details.value, details.error_code) == ({"d": 1}, ErrorCode.TYPE_MISMATCH)


def test_killed_number__safe_value_disabled(client: OpenFeatureClient) -> None:
    """A kill serves the operator's declared safe value, not the caller's default."""
    details = client.get_integer_details("killed-ttl", 9999, ctx())
    assert (details.value, details.variant, details.reason) == (30, "safe", OFReason.DISABLED)
    assert details.error_code is None


@pytest.mark.parametrize(
    ("method", "key", "default"),
    [
        ("get_boolean_details", "tier", False),
        ("get_string_details", "ttl", "x"),
        ("get_string_details", "bool", "x"),
        ("get_integer_details", "tier", 3),
        ("get_float_details", "layout", 0.5),
        ("get_object_details", "tier", {"a": 1}),
    ],
)
def test_type_mismatch__default_and_code(
    client: OpenFeatureClient, method: str, key: str, default: Any
) -> None:
    details = getattr(client, method)(key, default, ctx())
    assert (details.value, details.error_code, details.reason) == (
        default,
        ErrorCode.TYPE_MISMATCH,
        OFReason.ERROR,
    )


def test_missing__flag_not_found_default(client: OpenFeatureClient) -> None:
    details = client.get_string_details("nope", "d", ctx())
    assert (details.value, details.error_code) == ("d", ErrorCode.FLAG_NOT_FOUND)


def test_invalid_tenant__invalid_context_default(client: OpenFeatureClient) -> None:
    details = client.get_float_details("ratio", 0.5, ctx("a\nb"))
    assert (details.value, details.error_code) == (0.5, ErrorCode.INVALID_CONTEXT)
