"""The SDK's evaluation: snapshots compiled for lookups, and the checks that read them.

This module is the implementation of the evaluation rule (the precedence table
of ``flags.evaluate``). ``CompiledChecks`` holds the two checks,
``is_enabled`` and ``evaluate``; ``FlagClient`` inherits them, and the pure
``flags.evaluate.evaluate`` runs the same ``evaluate`` on a one-flag table, so
there is one rule. The bucket formula comes from ``flags.bucketing``.

A ``CompiledFlag`` precomputes everything a check needs (the fixed answer of a
killed or disabled flag, the hash prefix, whether the answer depends on the
bucket at all, the ``Evaluation`` objects it can return), so a check allocates
nothing beyond the hash input of a rollout tenant. A ``CompiledSnapshot`` is
immutable once built and swapped into a client by one attribute assignment, so
a reader sees a whole snapshot or the previous one, never a mix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from flags.bucketing import bucket_of, hash_prefix
from flags.model import MAX_TENANT_LENGTH, Evaluation, FlagState, Reason, Snapshot, is_valid_tenant

__all__ = ["CompiledChecks", "CompiledFlag", "CompiledSnapshot", "compile_snapshot", "evaluate_one"]

log = logging.getLogger("flagrail.client")

# Evaluations are immutable values; flags at the same state version share them, so a
# snapshot of 10,000 flags holds a few hundred Evaluation objects, not 70,000.
_EVALUATIONS: dict[tuple[bool, Reason, int], Evaluation] = {}
_MISSING = {True: Evaluation(True, Reason.MISSING), False: Evaluation(False, Reason.MISSING)}
_NO_STATE = {True: Evaluation(True, Reason.DEFAULT), False: Evaluation(False, Reason.DEFAULT)}
_ERROR = {
    True: Evaluation(True, Reason.ERROR, 0, "bad argument"),
    False: Evaluation(False, Reason.ERROR, 0, "bad argument"),
}


def _evaluation(enabled: bool, reason: Reason, version: int) -> Evaluation:
    key = (enabled, reason, version)
    ev = _EVALUATIONS.get(key)
    if ev is None:
        ev = _EVALUATIONS.setdefault(key, Evaluation(enabled, reason, version))
    return ev


class CompiledFlag:
    """One flag's state in one environment, ready for checks. Immutable by convention.

    ``counts`` is the flag's ``[off, on]`` evaluation counter, shared with the
    client (it survives recompilations).
    """

    __slots__ = (
        "counts",
        "ev_fixed",
        "ev_no_tenant",
        "ev_rollout_off",
        "ev_rollout_on",
        "ev_tenant_off",
        "ev_tenant_on",
        "fixed",
        "key",
        "no_tenant",
        "open_all",
        "plain",
        "prefix",
        "rollout",
        "split",
        "state",
        "tenants_off",
        "tenants_on",
        "version",
    )

    def __init__(self, key: str, state: FlagState, counts: list[int]) -> None:
        self.key = key
        self.state = state
        self.version = v = state.version
        # counts[False] / counts[True]: evaluations that came out off / on.
        self.counts = counts
        if state.killed:
            self.fixed: bool | None = False
            self.ev_fixed: Evaluation | None = _evaluation(False, Reason.KILLED, v)
        elif not state.enabled:
            self.fixed = False
            self.ev_fixed = _evaluation(False, Reason.DISABLED, v)
        else:
            self.fixed = None
            self.ev_fixed = None
        # The answer without a tenant, and for a tenant in neither list when the
        # rollout is 0 or 100 (then the bucket does not matter).
        self.no_tenant = state.rollout >= 100
        # The bucket decides a tenant in neither list.
        self.split = 0 < state.rollout < 100
        # The bucket decides every valid tenant: no lists to look in first.
        self.plain = self.split and not state.tenants_on and not state.tenants_off
        # On for every valid tenant (is_enabled skips the lists): full rollout, nobody off.
        self.open_all = state.rollout >= 100 and not state.tenants_off
        self.ev_no_tenant = _evaluation(self.no_tenant, Reason.ROLLOUT, v)
        self.tenants_on = state.tenants_on
        self.tenants_off = state.tenants_off
        self.rollout = state.rollout
        self.prefix = hash_prefix(key)
        self.ev_tenant_on = _evaluation(True, Reason.TENANT_ON, v)
        self.ev_tenant_off = _evaluation(False, Reason.TENANT_OFF, v)
        self.ev_rollout_on = _evaluation(True, Reason.ROLLOUT, v)
        self.ev_rollout_off = _evaluation(False, Reason.ROLLOUT, v)


class CompiledChecks:
    """The flag checks over a compiled table: the one implementation of the rule.

    A mixin. The class using it provides ``_table`` (flag key -> ``CompiledFlag``,
    read once per check, so a check sees one whole snapshot), ``_loaded`` (False
    until a first snapshot: checks then answer the caller's default with reason
    ``default``), ``_counts`` (flag key -> ``[off, on]``, for flags not in the
    table) and ``_errors`` (bad arguments seen); it may override ``_foreign`` to
    answer keys the table lacks.

    ``is_enabled(k, t, d)`` is ``evaluate(k, t, d).enabled`` in every case; the two
    are written out separately only so that the bool check allocates nothing and
    makes no extra call (a property test holds them together).

    Checks never raise, never block and take no lock. Counters are incremented
    without a lock: under heavy multi-threaded use a count may rarely be lost.
    """

    __slots__ = ()

    _table: Mapping[str, CompiledFlag]
    _loaded: bool
    _counts: dict[str, list[int]]
    _errors: int

    def is_enabled(self, key: str, tenant: str | None = None, default: bool = False) -> bool:
        """True when ``key`` is on for ``tenant``. Never raises; bad arguments give ``default``."""
        try:
            c = self._table.get(key)
            if c is None:
                return self._unknown(key, tenant, default).enabled
            r = c.fixed
            if r is None:
                if tenant is None:
                    r = c.no_tenant
                elif (
                    tenant.__class__ is not str
                    or not 0 < len(tenant) <= MAX_TENANT_LENGTH
                    or (not tenant.isprintable() and not is_valid_tenant(tenant))
                ):
                    self._errors += 1
                    return default is True
                elif c.plain:
                    # Counted here rather than below: the hot rollout path, kept short.
                    if bucket_of(c.prefix + tenant) <= c.rollout:
                        c.counts[1] += 1
                        return True
                    c.counts[0] += 1
                    return False
                elif c.open_all:
                    r = True
                elif tenant in c.tenants_off:
                    r = False
                elif tenant in c.tenants_on:
                    r = True
                elif c.split:
                    r = bucket_of(c.prefix + tenant) <= c.rollout
                else:
                    r = c.no_tenant
            # An int index: list[bool] takes CPython's slow, unspecialized path.
            if r:
                c.counts[1] += 1
                return True
            c.counts[0] += 1
            return False
        except Exception:
            # A check must never take the caller down (unhashable key, a tenant
            # whose __eq__ raises, ...). Logged at debug level with traceback, to
            # keep a hot loop of bad calls cheap.
            self._errors += 1
            log.debug("flag check failed; serving the default", exc_info=True)
            return default is True

    def evaluate(self, key: str, tenant: str | None = None, default: bool = False) -> Evaluation:
        """Like ``is_enabled`` with the reason and the state version. Never raises."""
        try:
            c = self._table.get(key)
            if c is None:
                return self._unknown(key, tenant, default)
            ev = c.ev_fixed
            if ev is None:
                if tenant is None:
                    ev = c.ev_no_tenant
                elif (
                    tenant.__class__ is not str
                    or not 0 < len(tenant) <= MAX_TENANT_LENGTH
                    or (not tenant.isprintable() and not is_valid_tenant(tenant))
                ):
                    self._errors += 1
                    return Evaluation(default is True, Reason.ERROR, c.version, "invalid tenant")
                elif c.plain:
                    # Counted here, as in is_enabled: the hot rollout path, kept short.
                    if bucket_of(c.prefix + tenant) <= c.rollout:
                        c.counts[1] += 1
                        return c.ev_rollout_on
                    c.counts[0] += 1
                    return c.ev_rollout_off
                elif tenant in c.tenants_off:
                    ev = c.ev_tenant_off
                elif tenant in c.tenants_on:
                    ev = c.ev_tenant_on
                elif c.split:
                    if bucket_of(c.prefix + tenant) <= c.rollout:
                        ev = c.ev_rollout_on
                    else:
                        ev = c.ev_rollout_off
                else:
                    ev = c.ev_no_tenant
            c.counts[1 if ev.enabled else 0] += 1
            return ev
        except Exception:
            # As in is_enabled: the one broad except of a check.
            self._errors += 1
            log.debug("flag check failed; serving the default", exc_info=True)
            return _ERROR[default is True]

    def _unknown(self, key: object, tenant: object, default: object) -> Evaluation:
        """A key not in the table: a bad key (error), no snapshot yet (default), a flag
        the source answers itself (``_foreign``), else missing. Counted per key."""
        on = default is True
        if type(key) is not str:
            self._errors += 1
            return _ERROR[on]
        if not self._loaded:
            return _NO_STATE[on]
        ev = self._foreign(key, tenant, on)
        if ev is None:
            ev = _MISSING[on]
        elif ev.reason is Reason.ERROR:
            self._errors += 1
            return ev
        slot = self._counts.get(key)
        if slot is None:
            slot = self._counts[key] = [0, 0]
        slot[1 if ev.enabled else 0] += 1
        return ev

    def _foreign(self, key: str, tenant: object, default: bool) -> Evaluation | None:
        """The answer for ``key`` when the snapshot does not hold it, from elsewhere
        (None: the flag is missing). Here: always None."""
        return None


class _OneFlag(CompiledChecks):
    """A table of one flag (or none), for the pure ``evaluate_one``."""

    __slots__ = ("_counts", "_errors", "_loaded", "_table")

    def __init__(self, key: str, state: FlagState | None) -> None:
        self._loaded = True
        self._counts: dict[str, list[int]] = {}
        self._errors = 0
        self._table = {key: CompiledFlag(key, state, [0, 0])} if state is not None else {}


def evaluate_one(
    flag_key: str, state: FlagState | None, tenant: str | None, default: bool
) -> Evaluation:
    """``CompiledChecks.evaluate`` of ``flag_key`` in a snapshot holding only ``state``
    (``None``: the flag is not in the snapshot). Pure: no counter outlives the call."""
    return _OneFlag(flag_key, state).evaluate(flag_key, tenant, default)


@dataclass(frozen=True, slots=True)
class CompiledSnapshot:
    """A whole environment, compiled. ``table`` maps flag key to ``CompiledFlag``."""

    environment: str
    version: int
    table: Mapping[str, CompiledFlag]
    snapshot: Snapshot

    def with_change(
        self,
        version: int,
        flag: str,
        state: FlagState | None,
        counts: dict[str, list[int]],
    ) -> CompiledSnapshot:
        """This snapshot with one flag replaced (``state`` None removes it), at ``version``.

        Compiles only the changed flag: the cost is two dict copies, not a recompilation.
        """
        flags = dict(self.snapshot.flags)
        table = dict(self.table)
        if state is None:
            flags.pop(flag, None)
            table.pop(flag, None)
        else:
            flags[flag] = state
            slot = counts.get(flag)
            if slot is None:
                slot = counts[flag] = [0, 0]
            table[flag] = CompiledFlag(flag, state, slot)
        return CompiledSnapshot(
            self.environment, version, table, Snapshot(self.environment, version, flags)
        )


def compile_snapshot(
    snapshot: Snapshot, counts: dict[str, list[int]] | None = None
) -> CompiledSnapshot:
    """Compile ``snapshot``. ``counts`` (per flag key) is shared across recompilations,
    so evaluation counters survive snapshot swaps; missing entries are created."""
    counts = counts if counts is not None else {}
    table: dict[str, CompiledFlag] = {}
    for key, state in snapshot.flags.items():
        slot = counts.get(key)
        if slot is None:
            slot = counts[key] = [0, 0]
        table[key] = CompiledFlag(key, state, slot)
    return CompiledSnapshot(snapshot.environment, snapshot.version, table, snapshot)
