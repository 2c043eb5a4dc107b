"""A ``FlagClient`` whose flags a test sets directly, and a default-client swap.

Code under test should take its client as an argument (dependency injection);
``override_default_client`` is for code that calls ``flags.get_default_client()``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from flags.client import FlagClient, set_default_client
from flags.model import FlagState, Snapshot, validate_flag_key, validate_tenant

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

    def set(self, key: str, value: bool, tenant: str | None = None) -> FlagState:
        """Turn ``key`` on or off for every tenant, or only for ``tenant``; returns the state.

        Without ``tenant`` the flag becomes plainly on (enabled, rollout 100, not
        killed, no tenant overrides) or off (disabled). With ``tenant`` only that
        tenant changes (it moves to ``tenants_on`` or ``tenants_off``); others keep
        their answer, and a flag the client did not know is off for them.

        Raises ``flags.errors.ValidationError`` for a malformed key or tenant and
        ``TypeError`` when ``value`` is not a bool.
        """
        validate_flag_key(key)
        if type(value) is not bool:
            raise TypeError(f"value for flag {key!r} must be a bool, got {value!r}")
        if tenant is not None:
            validate_tenant(tenant)
        with self._set_lock:
            flags = dict(self.snapshot.flags) if self.snapshot is not None else {}
            current = flags.get(key)
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
