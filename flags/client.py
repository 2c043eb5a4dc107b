"""FlagClient: the in-process SDK.

Checks (``is_enabled``, ``evaluate``) read an immutable compiled snapshot that a
background sync swaps in whole; they never raise, never do I/O and never take a
lock. With no snapshot at all they answer the caller's default with reason
``default``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mmh3

from flags.compiled import CompiledFlag, CompiledSnapshot, compile_snapshot
from flags.model import Evaluation, FlagState, Reason, Snapshot

__all__ = ["FlagClient", "evaluation_counts", "get_default_client", "set_default_client"]

log = logging.getLogger("flagrail.client")

_hash = mmh3.hash
_EMPTY: Mapping[str, CompiledFlag] = {}
_MISSING = {True: Evaluation(True, Reason.MISSING), False: Evaluation(False, Reason.MISSING)}
_NO_STATE = {True: Evaluation(True, Reason.DEFAULT), False: Evaluation(False, Reason.DEFAULT)}
_ERROR = {
    True: Evaluation(True, Reason.ERROR, 0, "bad argument"),
    False: Evaluation(False, Reason.ERROR, 0, "bad argument"),
}

ChangeCallback = Callable[["FlagClient", Snapshot], None]

# Evaluation counts of clients already closed or collected, kept for process-wide
# reports (the pytest plugin's --flag-coverage). Guarded by _retired_lock.
_live_counts: weakref.WeakSet[_Counts] = weakref.WeakSet()
_retired_counts: dict[str, list[int]] = {}
_retired_lock = threading.Lock()


class _Counts(dict[str, list[int]]):
    """Per-flag ``[off, on]`` evaluation counters of one client (weak-referenceable)."""

    __slots__ = ("__weakref__",)
    __hash__ = object.__hash__  # identity, so live counters can sit in a WeakSet
    __eq__ = object.__eq__


def _retire(counts: _Counts) -> None:
    with _retired_lock:
        for key, (off, on) in list(counts.items()):
            slot = _retired_counts.setdefault(key, [0, 0])
            slot[0] += off
            slot[1] += on
        counts.clear()


def evaluation_counts() -> dict[str, tuple[int, int]]:
    """Process-wide ``{flag key: (off, on)}`` over every FlagClient, live or closed.

    Counts are approximate under heavy multi-threaded use (increments are not atomic).
    """
    with _retired_lock:
        total = {k: [off, on] for k, (off, on) in _retired_counts.items()}
        live = list(_live_counts)
    for counts in live:
        for key, (off, on) in list(counts.items()):
            slot = total.setdefault(key, [0, 0])
            slot[0] += off
            slot[1] += on
    return {k: (v[0], v[1]) for k, v in total.items() if v[0] or v[1]}


class FlagClient:
    """Evaluate flags of one environment in process.

    Thread-safe: checks read one attribute holding an immutable compiled
    snapshot; updates build a new one and swap it in. Safe to call from asyncio
    code: no check blocks.
    """

    def __init__(
        self,
        url: str | None,
        token: str | None,
        environment: str,
        *,
        redis_url: str | None = None,
        backup_path: str | Path | None = None,
        poll_interval: float = 5.0,
        metrics_interval: float = 10.0,
        app_name: str | None = None,
    ) -> None:
        self.url = url.rstrip("/") if url else None
        self.token = token
        self.environment = environment
        self.redis_url = redis_url
        self.backup_path = Path(backup_path) if backup_path else None
        self.poll_interval = poll_interval
        self.metrics_interval = metrics_interval
        self.app_name = app_name
        self._counts = _Counts()
        _live_counts.add(self._counts)
        self._finalizer = weakref.finalize(self, _retire, self._counts)
        self._compiled: CompiledSnapshot | None = None
        self._table: Mapping[str, CompiledFlag] = _EMPTY
        self._source = "none"
        self._last_update_at: float | None = None
        self._errors = 0
        self._resyncs = 0
        self._callbacks: list[ChangeCallback] = []
        self._update_lock = threading.Lock()
        self._ready = threading.Event()
        self._closed = False

    # ----------------------------------------------------------------- offline
    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any] | Snapshot) -> FlagClient:
        """A client serving a fixed snapshot (the body of ``/sdk/v1/snapshot``); no sync.

        Raises ``flags.errors.ValidationError`` if ``data`` is not a valid snapshot.
        """
        snapshot = data if isinstance(data, Snapshot) else Snapshot.from_dict(data)
        client = cls(None, None, snapshot.environment)
        client.load_snapshot(snapshot, source="snapshot")
        return client

    @classmethod
    def from_file(cls, path: str | Path) -> FlagClient:
        """``from_snapshot`` on the JSON in ``path``. Raises ``OSError`` or ``ValidationError``."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_snapshot(json.load(fh))

    # ----------------------------------------------------------------- checks
    def is_enabled(self, key: str, tenant: str | None = None, default: bool = False) -> bool:
        """True when ``key`` is on for ``tenant``. Never raises; bad arguments give ``default``."""
        try:
            c = self._table.get(key)
            if c is None:
                if self._compiled is None or type(key) is not str:
                    self._errors += type(key) is not str
                    return default is True
                slot = self._counts.get(key)
                if slot is None:
                    slot = self._counts[key] = [0, 0]
                slot[default is True] += 1
                return default is True
            r = c.fixed
            if r is None:
                if tenant is None:
                    r = c.no_tenant
                elif (
                    tenant.__class__ is not str
                    or not 0 < len(tenant) <= 200
                    or (not tenant.isprintable() and not _valid_unprintable(tenant))
                ):
                    self._errors += 1
                    return default is True
                elif tenant in c.tenants_off:
                    r = False
                elif tenant in c.tenants_on:
                    r = True
                else:
                    r = _hash(c.prefix + tenant, 0, False) % 100 < c.rollout
            c.counts[r] += 1
            return r
        except Exception:
            self._errors += 1
            return default is True

    def evaluate(self, key: str, tenant: str | None = None, default: bool = False) -> Evaluation:
        """Like ``is_enabled`` with the reason and the state version. Never raises."""
        try:
            c = self._table.get(key)
            if c is None:
                if self._compiled is None:
                    return _NO_STATE[default is True]
                if type(key) is not str:
                    self._errors += 1
                    return _ERROR[default is True]
                slot = self._counts.get(key)
                if slot is None:
                    slot = self._counts[key] = [0, 0]
                slot[default is True] += 1
                return _MISSING[default is True]
            ev = c.ev_fixed
            if ev is None:
                if tenant is None:
                    ev = c.ev_no_tenant
                elif (
                    tenant.__class__ is not str
                    or not 0 < len(tenant) <= 200
                    or (not tenant.isprintable() and not _valid_unprintable(tenant))
                ):
                    self._errors += 1
                    return Evaluation(default is True, Reason.ERROR, c.version, "invalid tenant")
                elif tenant in c.tenants_off:
                    ev = c.ev_tenant_off
                elif tenant in c.tenants_on:
                    ev = c.ev_tenant_on
                elif _hash(c.prefix + tenant, 0, False) % 100 < c.rollout:
                    ev = c.ev_rollout_on
                else:
                    ev = c.ev_rollout_off
            c.counts[ev.enabled] += 1
            return ev
        except Exception:
            # The one broad except of the SDK: a check must never take the caller
            # down (unhashable key, a tenant whose __eq__ raises, ...). Logged with
            # traceback at debug level to keep a hot loop of bad calls cheap.
            self._errors += 1
            log.debug("flag check failed; serving the default", exc_info=True)
            return _ERROR[default is True]

    def state(self, key: str) -> FlagState | None:
        """The current state of ``key``, or None if this client does not know it."""
        c = self._table.get(key)
        return c.state if c is not None else None

    def flag_keys(self) -> list[str]:
        return sorted(self._table)

    # ----------------------------------------------------------------- updates
    def load_snapshot(self, snapshot: Snapshot, *, source: str) -> None:
        """Swap in a whole snapshot and notify ``on_change`` callbacks.

        ``source`` is what ``stats()["source"]`` reports. Thread-safe.
        """
        with self._update_lock:
            compiled = compile_snapshot(snapshot, self._counts)
            self._install(compiled, source)
        self._notify(snapshot)

    def apply_change(
        self, version: int, flag: str, state: FlagState | None, *, source: str
    ) -> bool:
        """Apply one change event at environment ``version``.

        Returns False (and changes nothing) when ``version`` is not the next one:
        the caller must resync from a full snapshot. ``state`` None removes the flag.
        """
        with self._update_lock:
            current = self._compiled
            if current is None or version != current.version + 1:
                return False
            flags = dict(current.snapshot.flags)
            if state is None:
                flags.pop(flag, None)
            else:
                flags[flag] = state
            snapshot = Snapshot(current.environment, version, flags)
            self._install(compile_snapshot(snapshot, self._counts), source)
        self._notify(snapshot)
        return True

    def _install(self, compiled: CompiledSnapshot, source: str) -> None:
        self._compiled = compiled
        self._table = compiled.table
        self._source = source
        self._last_update_at = time.time()
        self._ready.set()

    def _notify(self, snapshot: Snapshot) -> None:
        for callback in list(self._callbacks):
            try:
                callback(self, snapshot)
            except Exception:  # user code: log it, keep the other callbacks running
                log.exception("on_change callback %r failed", callback)

    def on_change(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(client, snapshot)`` after every applied update (on the
        sync thread). Returns a function that unregisters it."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    # ----------------------------------------------------------------- status
    @property
    def version(self) -> int:
        """The environment version of the applied snapshot (0 before the first)."""
        return self._compiled.version if self._compiled else 0

    @property
    def snapshot(self) -> Snapshot | None:
        return self._compiled.snapshot if self._compiled else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_until_ready(self, timeout: float | None = None) -> bool:
        """Block until a first snapshot (server, Redis or backup) is applied."""
        return self._ready.wait(timeout)

    def stats(self) -> dict[str, Any]:
        return {
            "source": self._source,
            "environment": self.environment,
            "version": self.version,
            "last_update_at": self._last_update_at,
            "flags": len(self._table),
            "errors": self._errors,
            "resyncs": self._resyncs,
        }

    def counts(self) -> dict[str, tuple[int, int]]:
        """This client's ``{flag key: (off, on)}`` evaluation counts since creation."""
        return {k: (v[0], v[1]) for k, v in list(self._counts.items()) if v[0] or v[1]}

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> FlagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _valid_unprintable(tenant: str) -> bool:
    """Slow path of tenant validation: unprintable but without control characters."""
    import unicodedata

    return not any(unicodedata.category(ch) == "Cc" for ch in tenant)


_default_client: FlagClient | None = None


def get_default_client() -> FlagClient | None:
    """The process's default client (set by the application or by the test plugin)."""
    return _default_client


def set_default_client(client: FlagClient | None) -> FlagClient | None:
    """Make ``client`` the process's default; returns the previous one."""
    global _default_client
    previous, _default_client = _default_client, client
    return previous
