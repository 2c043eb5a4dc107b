"""A ``FlagClient`` whose flags a test sets directly, and a default-client swap.

Code under test should take its client as an argument (dependency injection);
``override_default_client`` is for code that calls ``flags.get_default_client()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from flags.client import FlagClient, set_default_client
from flags.errors import ValidationError
from flags.model import (
    FlagState,
    FlagType,
    Snapshot,
    Variant,
    validate_flag_key,
    validate_tenant,
    validate_variants,
)

__all__ = ["TestFlagClient", "override_default_client"]


class TestFlagClient(FlagClient):
    """An in-memory ``FlagClient`` with no server: flags are whatever the test sets.

    A fresh client knows only the flags given to it; any other flag answers the
    caller's default with reason ``missing`` (and counts as evaluated to it). Every
    change loads a new snapshot one version later, so ``on_change`` callbacks run
    as they would on a sync. Evaluations count towards ``--flag-coverage``.

    Thread-safe: changes are serialized; checks never block.
    """

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(
        self, flags: Mapping[str, bool] | None = None, *, environment: str = "test"
    ) -> None:
        super().__init__(None, None, environment)
        self._set_lock = threading.Lock()
        states = {
            validate_flag_key(key): _everyone(bool(on), 0) for key, on in (flags or {}).items()
        }
        self.load_snapshot(Snapshot(environment, 0, states), source="test")

    def set(
        self,
        key: str,
        value: Any,
        tenant: str | None = None,
        *,
        variants: Mapping[str, Any] | None = None,
        off_variant: str | None = None,
    ) -> FlagState:
        """Turn ``key`` on or off, or make it serve a value, for every tenant or only
        ``tenant``; returns the state.

        A bool on a boolean flag: without ``tenant`` the flag becomes plainly on
        (enabled, rollout 100, not killed, no tenant overrides) or off (disabled).
        With ``tenant`` only that tenant changes (it moves to ``tenants_on`` or
        ``tenants_off``); others keep their answer, and a flag the client did not
        know is off for them.

        Anything else makes a typed flag (string for a str, number for an int or
        float, json for a dict or list; the type of a known typed flag is kept):
        ``value`` names a declared variant, or is a value (an equal variant's, or
        a variant called ``value`` holding it). Without ``tenant`` every tenant gets
        it (``on_variant``, no split, no pins); with ``tenant`` that tenant is
        pinned to it. ``variants`` (``{name: value}``) declares the flag's variants;
        ``off_variant`` its safe value (default: the one it had, else the first
        declared variant). A bool on a typed flag turns it on or off like a boolean.

        Raises ``flags.errors.ValidationError`` for a malformed key, tenant, variant
        or value, and ``TypeError`` when a known boolean flag is given anything but a
        bool (types are fixed at creation) or the type cannot be inferred (``None``).
        """
        validate_flag_key(key)
        if tenant is not None:
            validate_tenant(tenant)
        with self._set_lock:
            flags = dict(self.snapshot.flags) if self.snapshot is not None else {}
            current = flags.get(key)
            if (
                current is not None
                and current.type is FlagType.BOOLEAN
                and (type(value) is not bool or variants is not None)
            ):
                # A flag's type is fixed when it is created.
                raise TypeError(f"flag {key!r} is boolean: value must be a bool, got {value!r:.60}")
            typed = (
                variants is not None
                or type(value) is not bool
                or (current is not None and current.type is not FlagType.BOOLEAN)
            )
            if typed:
                state = _typed(key, current, value, tenant, variants, off_variant)
                flags[key] = state
                self._load(flags)
                return state
            version = current.version + 1 if current is not None else 1
            if tenant is None:
                state = _everyone(value, version)
            else:
                state = _one_tenant(current, tenant, value, version)
            flags[key] = state
            self._load(flags)
        return state

    def set_state(self, key: str, state: FlagState) -> None:
        """Give ``key`` any state (a partial rollout, a kill). Raises ``ValidationError``."""
        validate_flag_key(key)
        with self._set_lock:
            flags = dict(self.snapshot.flags) if self.snapshot is not None else {}
            flags[key] = state
            self._load(flags)

    def reset(self) -> None:
        """Forget every flag (a new, empty snapshot). Evaluation counts are kept."""
        with self._set_lock:
            self._load({})

    def _load(self, flags: dict[str, FlagState]) -> None:
        self.load_snapshot(Snapshot(self.environment, self.version + 1, flags), source="test")


def _type_of(value: object) -> FlagType:
    if isinstance(value, str):
        return FlagType.STRING
    if type(value) in (int, float):
        return FlagType.NUMBER
    if isinstance(value, (dict, list)):
        return FlagType.JSON
    raise TypeError(f"cannot tell a flag type from {value!r:.60}; declare variants")


def _typed(
    key: str,
    current: FlagState | None,
    value: Any,
    tenant: str | None,
    variants: Mapping[str, Any] | None,
    off_variant: str | None,
) -> FlagState:
    """The typed state ``TestFlagClient.set`` makes (see there)."""
    known = current if current is not None and current.type is not FlagType.BOOLEAN else None
    declared = {v.name: v.value for v in known.variants} if known is not None else {}
    if variants is not None:
        declared = dict(variants)
    if known is not None:
        flag_type = known.type
    elif declared:
        flag_type = _type_of(next(iter(declared.values())))
    else:
        flag_type = _type_of(value)
    version = current.version + 1 if current is not None else 1
    base = known or FlagState(enabled=True, rollout=0 if tenant is not None else 100)
    if type(value) is bool and flag_type is not FlagType.BOOLEAN:
        if not declared:
            raise ValidationError(f"{key}: declare variants before turning it on", field="variants")
        name: str | None = None  # on/off only
    elif isinstance(value, str) and value in declared and flag_type is not FlagType.STRING:
        name = value
    elif isinstance(value, str) and value in declared and declared[value] != value:
        name = value  # a variant's name (a string flag: unless a variant holds it)
    else:
        name = next((n for n, v in declared.items() if v == value and type(v) is type(value)), None)
        if name is None:
            name = "value"
            declared[name] = value
    chosen = validate_variants(flag_type, [{"name": n, "value": v} for n, v in declared.items()])
    names = [v.name for v in chosen]
    safe = off_variant or (base.off_variant if base.off_variant in names else names[0])
    state = replace(
        base,
        version=version,
        killed=False,
        type=flag_type,
        variants=tuple(Variant(v.name, v.value) for v in chosen),
        off_variant=safe,
        on_variant=base.on_variant if base.on_variant in names else (name or names[0]),
        split=tuple(p for p in base.split if p[0] in names) if base.split else (),
        tenant_variants=tuple(p for p in base.tenant_variants if p[1] in names),
    )
    if len({n for n, _ in state.split}) != len(state.split) or (
        state.split and sum(w for _, w in state.split) != 1000
    ):
        state = replace(state, split=())
    on, off = set(state.tenants_on), set(state.tenants_off)
    pins = dict(state.tenant_variants)
    if type(value) is bool:
        if tenant is None:
            state = replace(
                state, enabled=value, rollout=100, tenants_on=frozenset(), tenants_off=frozenset()
            )
        else:
            (on if value else off).add(tenant)
            (off if value else on).discard(tenant)
            state = replace(state, tenants_on=frozenset(on), tenants_off=frozenset(off))
    elif tenant is None:
        state = replace(
            state,
            enabled=True,
            rollout=100,
            tenants_on=frozenset(),
            tenants_off=frozenset(),
            on_variant=name,
            split=(),
            tenant_variants=(),
        )
    else:
        on.add(tenant)
        off.discard(tenant)
        pins[tenant] = name  # type: ignore[assignment]
        state = replace(
            state,
            enabled=True,
            tenants_on=frozenset(on),
            tenants_off=frozenset(off),
            tenant_variants=tuple(sorted(pins.items())),
        )
    return state.check_variants()


def _everyone(on: bool, version: int) -> FlagState:
    if on:
        return FlagState(enabled=True, rollout=100, version=version)
    return FlagState(enabled=False, version=version)


def _one_tenant(current: FlagState | None, tenant: str, on: bool, version: int) -> FlagState:
    if current is None or current.killed:
        # Unknown (or killed) flag: the others are off.
        current = FlagState(enabled=True, rollout=0)
    elif not current.enabled:
        # Disabled is off for everyone; enabled at rollout 0 is the same for others
        # and lets tenant overrides apply.
        current = FlagState(enabled=True, rollout=0)
    tenants_on = set(current.tenants_on)
    tenants_off = set(current.tenants_off)
    if on:
        tenants_on.add(tenant)
        tenants_off.discard(tenant)
    else:
        tenants_off.add(tenant)
        tenants_on.discard(tenant)
    return FlagState(
        enabled=True,
        rollout=current.rollout,
        tenants_on=frozenset(tenants_on),
        tenants_off=frozenset(tenants_off),
        version=version,
    )


@contextmanager
def override_default_client(client: FlagClient | None) -> Iterator[FlagClient | None]:
    """Make ``client`` the process's default client inside the block; restore the previous one.

    Not thread-safe with respect to other code swapping the default at the same time.
    """
    previous = set_default_client(client)
    try:
        yield client
    finally:
        set_default_client(previous)
