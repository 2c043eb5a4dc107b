"""The SDK's evaluation: snapshots compiled for lookups, and the checks that read them.

This module is the implementation of the evaluation rule (the precedence table
of ``flags.evaluate``). ``CompiledChecks`` holds the two checks,
``is_enabled`` and ``evaluate``; ``FlagClient`` inherits them, and the pure
``flags.evaluate.evaluate`` runs the same ``evaluate`` on a one-flag table, so
there is one rule. The bucket formula comes from ``flags.bucketing``.

A ``CompiledFlag`` precomputes everything a check needs (the fixed answer of a
killed or disabled flag, the hash prefix, whether the answer depends on the
bucket at all, the ``Evaluation`` objects it can return), so a check allocates
nothing beyond the hash input of a rollout tenant (and, in ``value()``, the bounded
memo entry of a split tenant seen for the first time: ``Refinement``). A
``CompiledSnapshot`` is immutable once built and swapped into a client by one
attribute assignment, so a reader sees a whole snapshot or the previous one, never
a mix.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import mmh3

from flags.bucketing import SPLIT_BUCKETS, VARIANT_SEED, bucket_of, hash_prefix, split_bucket_of
from flags.model import (
    MAX_TENANT_LENGTH,
    Evaluation,
    FlagState,
    FlagType,
    Reason,
    Snapshot,
    is_valid_tenant,
)

__all__ = [
    "CompiledChecks",
    "CompiledFlag",
    "CompiledSnapshot",
    "VariantResult",
    "compile_snapshot",
    "evaluate_one",
]


class VariantResult(NamedTuple):
    """What ``variant()`` answers: the variant's name (None when none was served), its
    value (None then) and the reason."""

    name: str | None
    value: Any
    reason: Reason


# The default's classes a flag of each type answers ``value()`` for (None: any type).
_ACCEPTS: Mapping[FlagType, frozenset[type]] = {
    FlagType.BOOLEAN: frozenset({bool, type(None)}),
    FlagType.STRING: frozenset({str, type(None)}),
    FlagType.NUMBER: frozenset({int, float, type(None)}),
    FlagType.JSON: frozenset({dict, list, type(None)}),
}
_BOOL_VARIANTS = {True: ("on", True), False: ("off", False)}
_BOOL_ACCEPTS = _ACCEPTS[FlagType.BOOLEAN]
# variant() of a boolean flag: one result per (on, reason), shared by every flag.
_BOOL_RESULTS: dict[tuple[bool, Reason], VariantResult] = {}
_NO_PINS: Mapping[str, Evaluation] = {}  # shared, never mutated


_hash = mmh3.hash


# value()'s tenant memo (see Refinement): at most MEMO_PER_FLAG tenants per compiled
# flag, at most MEMO_PER_PROCESS over every compiled flag alive in the process.
MEMO_PER_FLAG = 8192
MEMO_PER_PROCESS = 32768
# [entries the process may still memoize]: taken by a memo's insert, given back when the
# Refinement holding the memo is freed. Updated without a lock: under the GIL each
# update is one read-modify-write of a list item, so the count can only drift by a
# lost update between threads, never grow without bound.
_MEMO_ROOM = [MEMO_PER_PROCESS]


class Refinement:
    """What turns an on answer of a typed flag into a tenant's variant: its pins, then
    its split (cumulative weights and the Evaluation of each split variant).

    The split variant of a tenant is ``evs[bisect_right(cum, h % 1000)]`` with ``h`` the
    unsigned murmur3 of ``prefix + tenant`` under ``VARIANT_SEED``: the same index as
    ``bisect_left(cum, split_bucket_of(prefix + tenant))`` (bucket = ``h % 1000 + 1``),
    one call fewer on the hot path of ``value()``.

    ``value()``'s table, precomputed once per state version when the flag is ``open``
    (on for every valid tenant: not killed, enabled, rollout 100, nobody in
    ``tenants_off``; and every variant below declared): entry ``i`` serves
    ``values[i]`` and counts in ``slots[i]`` (the variant's served counter). Entries
    ``0..len(cum) - 1`` are the split's variants in order; entry ``len(cum)`` is the
    ``on_variant`` (where ``bisect_right`` lands past a split short of 1000, and for
    every tenant when there is no split); then the pinned variants.

    ``index`` maps a tenant to its entry: the pinned tenants, then a memo of the valid
    tenants ``value()`` placed by their split bucket, so a tenant seen before costs
    one dict lookup instead of its validation and its hash. The memo is bounded:
    ``room`` more tenants for this flag (at most ``MEMO_PER_FLAG``) and, across the
    process, ``MEMO_PER_PROCESS``; past either bound a tenant is placed by its hash
    on every call, with the same answer. The memo dies with this state version (a
    change compiles a new Refinement), so it never serves a previous split.
    """

    __slots__ = (
        "cum",
        "evs",
        "index",
        "open",
        "pins",
        "prefix",
        "room",
        "slots",
        "values",
    )

    def __init__(
        self,
        prefix: str,
        pins: Mapping[str, Evaluation],
        cum: tuple[int, ...],
        evs: tuple[Evaluation, ...],
    ) -> None:
        self.prefix = prefix
        self.pins = pins
        self.cum = cum
        self.evs = evs
        self.open = False
        self.room = 0
        self.index: dict[str, int] = {}
        self.values: tuple[Any, ...] = ()
        self.slots: tuple[list[int], ...] = ()

    def __del__(self, _room: list[int] = _MEMO_ROOM, _per_flag: int = MEMO_PER_FLAG) -> None:
        """Give this memo's entries back to the process's room (the defaults are bound at
        definition: at interpreter exit the module's globals may be gone)."""
        if self.open:
            _room[0] += _per_flag - self.room

    def open_table(self, on: Evaluation, served: Mapping[str, list[int]]) -> None:
        """Build ``value()``'s table (see the class) for a flag on for every valid tenant,
        ``on`` being its answer without pin or split and ``served`` its variant
        counters. Leaves ``open`` False when an entry's variant has no counter (is not
        declared): ``value()`` then takes the general path, which answers the default.
        A pin of an invalid tenant (possible only in a state built without
        validation) is left to the general path too."""
        entries = [*self.evs, on]
        names = [ev.variant for ev in entries]
        index: dict[str, int] = {}
        for tenant, ev in self.pins.items():
            if not is_valid_tenant(tenant):
                return
            if ev.variant not in names:
                names.append(ev.variant)
                entries.append(ev)
            index[tenant] = names.index(ev.variant)
        slots = [served.get(name) for name in names]  # type: ignore[arg-type]
        if any(slot is None for slot in slots):
            return
        self.index = index
        self.values = tuple(ev.value for ev in entries)
        self.slots = tuple(slots)  # type: ignore[arg-type]
        self.room = MEMO_PER_FLAG
        self.open = True

    def remember(self, tenant: str, i: int) -> None:
        """Memoize the valid, unpinned ``tenant``'s entry ``i`` (placed by its split bucket
        in ``value()``) in ``index`` if this flag (``room``) and the process have room."""
        if self.room > 0 and _MEMO_ROOM[0] > 0:
            self.room -= 1
            _MEMO_ROOM[0] -= 1
            self.index[tenant] = i

    def pick(self, tenant: str, ev: Evaluation) -> Evaluation:
        """The on answer ``ev`` for ``tenant``: its pinned variant, else its split
        variant (Unleash's variant bucket), else ``ev`` (the on_variant)."""
        pinned = self.pins.get(tenant)
        if pinned is not None:
            return pinned
        if self.cum:
            index = bisect_left(self.cum, split_bucket_of(self.prefix + tenant))
            if index < len(self.evs):
                return self.evs[index]
        return ev


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
    client (it survives recompilations). A typed flag also counts the variants it
    serves, in ``variant_counts[key]`` (``{variant: [served]}``, every declared
    variant entered at zero) when given.
    """

    __slots__ = (
        "accepts",
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
        "refine",
        "rollout",
        "split",
        "state",
        "tenants_off",
        "tenants_on",
        "variant_counts",
    )

    def __init__(
        self,
        key: str,
        state: FlagState,
        counts: list[int],
        variant_counts: dict[str, dict[str, list[int]]] | None = None,
    ) -> None:
        self.key = key
        self.state = state
        v = state.version
        # The classes of a default value() answers this flag for (by its type).
        self.accepts: frozenset[type] = _ACCEPTS.get(state.type, _BOOL_ACCEPTS)
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
        # Typed flags: the same Evaluations carrying the variant served (off_variant
        # on every off answer, on_variant on every on answer), then the pins and the
        # split that refine an on answer for a tenant (None: nothing to refine).
        self.refine: Refinement | None = None
        self.variant_counts: dict[str, list[int]] | None = None
        if state.type is not FlagType.BOOLEAN:
            served = {} if variant_counts is None else variant_counts.setdefault(key, {})
            for variant in state.variants:
                served.setdefault(variant.name, [0])
            self.variant_counts = served
            values = {variant.name: variant.value for variant in state.variants}

            def typed(ev: Evaluation | None) -> Evaluation | None:
                if ev is None:
                    return None
                name = state.on_variant if ev.enabled else state.off_variant
                return Evaluation(ev.enabled, ev.reason, v, None, name, values.get(name))

            self.ev_fixed = typed(self.ev_fixed)
            self.ev_no_tenant = typed(self.ev_no_tenant)  # type: ignore[assignment]
            self.ev_tenant_on = typed(self.ev_tenant_on)  # type: ignore[assignment]
            self.ev_tenant_off = typed(self.ev_tenant_off)  # type: ignore[assignment]
            self.ev_rollout_on = typed(self.ev_rollout_on)  # type: ignore[assignment]
            self.ev_rollout_off = typed(self.ev_rollout_off)  # type: ignore[assignment]
            pins = _NO_PINS
            if state.tenant_variants:
                pins = {
                    tenant: Evaluation(True, Reason.PINNED, v, None, name, values.get(name))
                    for tenant, name in state.tenant_variants
                }
            cum: list[int] = []
            total = 0
            for _name, weight in state.split:
                total += weight
                cum.append(total)
            evs = tuple(
                Evaluation(True, Reason.SPLIT, v, None, name, values.get(name))
                for name, _ in state.split
            )
            if pins or cum:
                # An on answer for a tenant may become a pinned or split variant.
                self.refine = Refinement(self.prefix, pins, tuple(cum), evs)
                self.plain = False
                if self.fixed is None and self.open_all:
                    self.refine.open_table(self.ev_no_tenant, served)
        # variant(): the results of the Evaluations above, built on first use.

    def variant_result(self, ev: Evaluation) -> VariantResult:
        """``ev`` as ``variant()`` answers it (a boolean flag: ``on``/``off``)."""
        if self.variant_counts is not None:
            return VariantResult(ev.variant, ev.value, ev.reason)
        result = _BOOL_RESULTS.get((ev.enabled, ev.reason))
        if result is None:
            name, value = _BOOL_VARIANTS[ev.enabled]
            result = _BOOL_RESULTS.setdefault(
                (ev.enabled, ev.reason), VariantResult(name, value, ev.reason)
            )
        return result


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
        """True when ``key`` is on for ``tenant``. Never raises; bad arguments give ``default``.

        ``tenant=""`` is no tenant (as ``None``), as in every Unleash SDK."""
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
                    if tenant.__class__ is not str or tenant:
                        self._errors += 1
                        return default is True
                    r = c.no_tenant  # "" is no tenant
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
                    if tenant.__class__ is not str or tenant:
                        self._errors += 1
                        return Evaluation(
                            default is True, Reason.ERROR, c.state.version, "invalid tenant"
                        )
                    ev = c.ev_no_tenant  # "" is no tenant
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
                if c.refine is not None and ev.enabled and tenant:
                    ev = c.refine.pick(tenant, ev)
            c.counts[1 if ev.enabled else 0] += 1
            if c.variant_counts is not None:
                slot = c.variant_counts.get(ev.variant)  # type: ignore[arg-type]
                if slot is not None:
                    slot[0] += 1
            return ev
        except Exception:
            # As in is_enabled: the one broad except of a check.
            self._errors += 1
            log.debug("flag check failed; serving the default", exc_info=True)
            return _ERROR[default is True]

    def value(self, key: str, default: Any, tenant: str | None = None) -> Any:
        """The value ``key`` serves ``tenant``; ``default`` when the flag is missing, of
        another type than ``default`` (bool: boolean, str: string, int/float: number,
        dict/list: json; None accepts any type), the tenant is invalid, or no variant
        is served. A boolean flag's value is ``is_enabled``. Never raises.

        The same rule as ``evaluate`` (a property test holds them together), written
        out for speed.
        """
        try:
            c = self._table.get(key)
            if c is None:
                self._unknown(key, tenant, False)
                return default
            if default.__class__ not in c.accepts:
                return default
            r = c.refine
            if r is not None and r.open and tenant.__class__ is str:
                # The hot path of a split flag on for every valid tenant (value() needs
                # no reason): the tenant's pin or memoized entry, else its split bucket
                # once validated (see Refinement).
                i = r.index.get(tenant)
                if i is None and 0 < len(tenant) <= MAX_TENANT_LENGTH and tenant.isprintable():
                    # Placed by its split bucket; a tenant past the memo's bound pays no call.
                    i = bisect_right(
                        r.cum, _hash(r.prefix + tenant, VARIANT_SEED, False) % SPLIT_BUCKETS
                    )
                    if r.room > 0:
                        r.remember(tenant, i)
                if i is not None:
                    c.counts[1] += 1
                    r.slots[i][0] += 1
                    return r.values[i]
            ev = c.ev_fixed
            if ev is None:
                if tenant is None:
                    ev = c.ev_no_tenant
                elif (
                    tenant.__class__ is not str
                    or not 0 < len(tenant) <= MAX_TENANT_LENGTH
                    or (not tenant.isprintable() and not is_valid_tenant(tenant))
                ):
                    if tenant.__class__ is not str or tenant:
                        self._errors += 1
                        return default
                    ev = c.ev_no_tenant  # "" is no tenant
                elif c.plain:
                    ev = (
                        c.ev_rollout_on
                        if bucket_of(c.prefix + tenant) <= c.rollout
                        else c.ev_rollout_off
                    )
                elif tenant in c.tenants_off:
                    ev = c.ev_tenant_off
                else:
                    if tenant in c.tenants_on:
                        ev = c.ev_tenant_on
                    elif c.split:
                        if bucket_of(c.prefix + tenant) <= c.rollout:
                            ev = c.ev_rollout_on
                        else:
                            ev = c.ev_rollout_off
                    else:
                        ev = c.ev_no_tenant
                    if c.refine is not None and ev.enabled:
                        ev = c.refine.pick(tenant, ev)
            if ev.enabled:
                c.counts[1] += 1
            else:
                c.counts[0] += 1
            served = c.variant_counts
            if served is not None:
                slot = served.get(ev.variant)  # type: ignore[arg-type]
                if slot is None:
                    return default
                slot[0] += 1
                return ev.value
            return ev.enabled
        except Exception:
            # As in is_enabled: the one broad except of a check.
            self._errors += 1
            log.debug("flag check failed; serving the default", exc_info=True)
            return default

    def variant(self, key: str, tenant: str | None = None) -> VariantResult:
        """``(name, value, reason)`` of the variant ``key`` serves ``tenant``.

        A boolean flag serves ``on``/``off`` (True/False). When no variant is served
        (missing flag, invalid tenant, no snapshot yet) the name and value are None
        and the reason says why. Never raises.
        """
        try:
            c = self._table.get(key)
            ev = self.evaluate(key, tenant)
            if c is None or ev.reason is Reason.ERROR:
                return VariantResult(None, None, ev.reason)
            return c.variant_result(ev)
        except Exception:
            # As in is_enabled: the one broad except of a check.
            self._errors += 1
            log.debug("flag check failed; serving no variant", exc_info=True)
            return VariantResult(None, None, Reason.ERROR)

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
            table[flag] = CompiledFlag(flag, state, slot, getattr(counts, "variants", None))
        return CompiledSnapshot(
            self.environment, version, table, Snapshot(self.environment, version, flags)
        )


def compile_snapshot(
    snapshot: Snapshot, counts: dict[str, list[int]] | None = None
) -> CompiledSnapshot:
    """Compile ``snapshot``. ``counts`` (per flag key) is shared across recompilations,
    so evaluation counters survive snapshot swaps; missing entries are created."""
    counts = counts if counts is not None else {}
    # An EvaluationCounts also counts typed flags' variants; a plain dict does not.
    variants = getattr(counts, "variants", None)
    table: dict[str, CompiledFlag] = {}
    for key, state in snapshot.flags.items():
        slot = counts.get(key)
        if slot is None:
            slot = counts[key] = [0, 0]
        table[key] = CompiledFlag(key, state, slot, variants)
    return CompiledSnapshot(snapshot.environment, snapshot.version, table, snapshot)
