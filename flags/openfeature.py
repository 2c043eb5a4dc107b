"""FlagrailProvider: flagrail as an OpenFeature provider (``openfeature-sdk``).

Flags resolve through a ``FlagClient``; the tenant is the evaluation context's
targeting key, or its ``tenantId`` attribute when there is none. Each OpenFeature
type reads one flagrail type: boolean a boolean flag, string a string flag,
integer a number flag serving an integral value, float a number flag, object a
json flag serving an object or array. Anything else (a string flag asked as a
boolean, a json scalar asked as an object, 2.5 asked as an integer) resolves to
the default with ``TYPE_MISMATCH``. flagrail reasons map onto OpenFeature's:

============================  ==================================================
flagrail ``Reason``           OpenFeature resolution
============================  ==================================================
killed, disabled              ``DISABLED``
tenant_on, tenant_off         ``TARGETING_MATCH``
rollout, split                ``SPLIT``
pinned                        ``TARGETING_MATCH``
missing                       ``ERROR``, ``FLAG_NOT_FOUND``, the default value
error (a bad tenant)          ``ERROR``, ``INVALID_CONTEXT``, the default value
default (no flags loaded)     ``ERROR``, ``PROVIDER_NOT_READY``, the default value
============================  ==================================================

The variant is the served variant's name (a boolean flag's ``"on"`` / ``"off"``);
a killed flag serves its ``off_variant``, the declared safe value, with reason
``DISABLED``. ``flag_metadata`` carries the flagrail reason and state version.

After the client applies a new snapshot the provider emits
``PROVIDER_CONFIGURATION_CHANGED`` naming the flags whose state changed (or
``PROVIDER_READY`` when it is the client's first snapshot). Resolution never
raises and never blocks; only ``initialize`` waits, at most ``ready_timeout``
seconds, for the client's first snapshot.

Requires ``pip install 'flagrail[openfeature]'``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode, ProviderNotReadyError
from openfeature.flag_evaluation import FlagResolutionDetails
from openfeature.flag_evaluation import Reason as OFReason
from openfeature.provider import AbstractProvider, Metadata

from flags.client import FlagClient
from flags.model import Evaluation, FlagType, Reason, Snapshot

__all__ = ["FlagrailProvider", "changed_flags"]

TENANT_ATTRIBUTE = "tenantId"

_REASONS: Mapping[Reason, OFReason] = {
    Reason.KILLED: OFReason.DISABLED,
    Reason.DISABLED: OFReason.DISABLED,
    Reason.TENANT_ON: OFReason.TARGETING_MATCH,
    Reason.TENANT_OFF: OFReason.TARGETING_MATCH,
    Reason.ROLLOUT: OFReason.SPLIT,
    Reason.SPLIT: OFReason.SPLIT,
    Reason.PINNED: OFReason.TARGETING_MATCH,
}
_ERRORS: Mapping[Reason, tuple[ErrorCode, str]] = {
    Reason.MISSING: (ErrorCode.FLAG_NOT_FOUND, "flag is not defined in this environment"),
    Reason.ERROR: (ErrorCode.INVALID_CONTEXT, "the tenant is not a valid tenant id"),
    Reason.DEFAULT: (ErrorCode.PROVIDER_NOT_READY, "the flagrail client has no flags yet"),
}

T = TypeVar("T")


def changed_flags(before: Snapshot | None, after: Snapshot) -> list[str]:
    """Sorted keys whose state differs between two snapshots (added and removed too)."""
    old = before.flags if before is not None else {}
    keys = set(old) | set(after.flags)
    return sorted(k for k in keys if old.get(k) != after.flags.get(k))


def tenant_of(context: EvaluationContext | None) -> Any:
    """The targeting key, else the ``tenantId`` attribute, else None (validated later)."""
    if context is None:
        return None
    if context.targeting_key:
        return context.targeting_key
    return context.attributes.get(TENANT_ATTRIBUTE)


class FlagrailProvider(AbstractProvider):
    """An OpenFeature provider over one ``FlagClient`` (which the caller owns and closes).

    Thread-safe; resolution is as cheap as ``FlagClient.evaluate`` plus the
    result object.
    """

    def __init__(self, client: FlagClient, *, ready_timeout: float = 5.0) -> None:
        self.client = client
        self.ready_timeout = ready_timeout
        self._lock = threading.Lock()
        self._last: Snapshot | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def get_metadata(self) -> Metadata:
        return Metadata(name="flagrail")

    # ----------------------------------------------------------------- lifecycle
    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Subscribe to the client's changes; wait up to ``ready_timeout`` seconds for
        its first snapshot. Raises ``ProviderNotReadyError`` if none arrives (the
        provider then turns ready with the client's first snapshot)."""
        with self._lock:
            if self._unsubscribe is None:
                self._last = self.client.snapshot
                self._unsubscribe = self.client.on_change(self._changed)
        if not self.client.ready and not self.client.wait_until_ready(self.ready_timeout):
            raise ProviderNotReadyError("the flagrail client has no flags yet")

    def shutdown(self) -> None:
        """Stop listening to the client (the client itself stays open)."""
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _changed(self, _client: FlagClient, snapshot: Snapshot) -> None:
        with self._lock:
            before, self._last = self._last, snapshot
        if before is None:
            self.emit_provider_ready(ProviderEventDetails(flags_changed=sorted(snapshot.flags)))
            return
        changed = changed_flags(before, snapshot)
        if changed:
            self.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=changed, metadata={"version": snapshot.version})
            )

    # ----------------------------------------------------------------- resolution
    def _resolve(
        self,
        flag_key: str,
        default_value: T,
        evaluation_context: EvaluationContext | None,
        kind: str,
    ) -> FlagResolutionDetails[T]:
        """One resolution: evaluate, then check the flag's type against ``kind``."""
        ev = self.client.evaluate(flag_key, tenant_of(evaluation_context), default_value is True)
        metadata = {"reason": ev.reason.value, "version": ev.version}
        error = _ERRORS.get(ev.reason)
        if error is not None:
            return FlagResolutionDetails(
                value=default_value,
                error_code=error[0],
                error_message=ev.error or error[1],
                reason=OFReason.ERROR,
                flag_metadata=metadata,
            )
        state = self.client.state(flag_key)
        flag_type = state.type if state is not None else FlagType.BOOLEAN
        served = _typed_value(flag_type, ev, kind)
        if served is _MISMATCH:
            return self._type_mismatch(flag_key, default_value, kind, flag_type, metadata)
        return FlagResolutionDetails(
            value=served,  # type: ignore[arg-type]
            reason=_REASONS.get(ev.reason, OFReason.UNKNOWN),
            variant=ev.variant if flag_type is not FlagType.BOOLEAN else _on_off(ev.enabled),
            flag_metadata=metadata,
        )

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """The flag's value for the context's tenant; errors give ``default_value``."""
        return self._resolve(flag_key, default_value, evaluation_context, "boolean")

    def _type_mismatch(
        self,
        flag_key: str,
        default_value: T,
        kind: str,
        flag_type: FlagType,
        metadata: Mapping[str, Any],
    ) -> FlagResolutionDetails[T]:
        return FlagResolutionDetails(
            value=default_value,
            error_code=ErrorCode.TYPE_MISMATCH,
            error_message=f"{flag_key!r} is a {flag_type.value} flag, asked as {kind}",
            reason=OFReason.ERROR,
            flag_metadata=dict(metadata),
        )

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, "string")

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, "integer")

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, evaluation_context, "float")

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._resolve(flag_key, default_value, evaluation_context, "object")


_MISMATCH = object()


def _on_off(enabled: bool) -> str:
    return "on" if enabled else "off"


def _typed_value(flag_type: FlagType, ev: Evaluation, kind: str) -> Any:
    """The value ``ev`` serves as OpenFeature ``kind``, or ``_MISMATCH``."""
    if flag_type is FlagType.BOOLEAN:
        return ev.enabled if kind == "boolean" else _MISMATCH
    value = ev.value
    if ev.variant is None:
        return _MISMATCH
    if kind == "string" and flag_type is FlagType.STRING:
        return value
    if kind == "float" and flag_type is FlagType.NUMBER:
        return float(value)
    if kind == "integer" and flag_type is FlagType.NUMBER:
        if type(value) is int:
            return value
        return int(value) if float(value).is_integer() else _MISMATCH
    if kind == "object" and flag_type is FlagType.JSON and isinstance(value, (dict, list)):
        return value
    return _MISMATCH
