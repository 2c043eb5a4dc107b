"""FlagrailProvider: flagrail as an OpenFeature provider (``openfeature-sdk``).

Boolean flags resolve through a ``FlagClient``; the tenant is the evaluation
context's targeting key, or its ``tenantId`` attribute when there is none.
flagrail reasons map onto OpenFeature's:

============================  ==================================================
flagrail ``Reason``           OpenFeature resolution
============================  ==================================================
killed, disabled              ``DISABLED``
tenant_on, tenant_off         ``TARGETING_MATCH``
rollout                       ``SPLIT``
missing                       ``ERROR``, ``FLAG_NOT_FOUND``, the default value
error (a bad tenant)          ``ERROR``, ``INVALID_CONTEXT``, the default value
default (no flags loaded)     ``ERROR``, ``PROVIDER_NOT_READY``, the default value
============================  ==================================================

Variants are ``"on"`` / ``"off"``; ``flag_metadata`` carries the flagrail reason
and state version. String, integer, float and object flags do not exist in
flagrail: they resolve to the default with ``TYPE_MISMATCH``.

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
from flags.model import Reason, Snapshot

__all__ = ["FlagrailProvider", "changed_flags"]

TENANT_ATTRIBUTE = "tenantId"

_REASONS: Mapping[Reason, OFReason] = {
    Reason.KILLED: OFReason.DISABLED,
    Reason.DISABLED: OFReason.DISABLED,
    Reason.TENANT_ON: OFReason.TARGETING_MATCH,
    Reason.TENANT_OFF: OFReason.TARGETING_MATCH,
    Reason.ROLLOUT: OFReason.SPLIT,
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
    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """The flag's value for the context's tenant; errors give ``default_value``."""
        ev = self.client.evaluate(flag_key, tenant_of(evaluation_context), default_value)
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
        return FlagResolutionDetails(
            value=ev.enabled,
            reason=_REASONS.get(ev.reason, OFReason.UNKNOWN),
            variant="on" if ev.enabled else "off",
            flag_metadata=metadata,
        )

    def _type_mismatch(
        self, flag_key: str, default_value: T, kind: str
    ) -> FlagResolutionDetails[T]:
        return FlagResolutionDetails(
            value=default_value,
            error_code=ErrorCode.TYPE_MISMATCH,
            error_message=f"flagrail flags are boolean; {flag_key!r} was asked as {kind}",
            reason=OFReason.ERROR,
        )

    def resolve_string_details(
        self,
        flag_key: str,
        default_value: str,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[str]:
        return self._type_mismatch(flag_key, default_value, "a string")

    def resolve_integer_details(
        self,
        flag_key: str,
        default_value: int,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[int]:
        return self._type_mismatch(flag_key, default_value, "an integer")

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        return self._type_mismatch(flag_key, default_value, "a float")

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._type_mismatch(flag_key, default_value, "an object")
