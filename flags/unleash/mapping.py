"""Pure mapping between flagrail flag states and Unleash client API v2 features.

The tenant is the Unleash context field ``tenantId``. A state maps to a feature
that every Unleash SDK evaluates to the answer ``flags.evaluate.evaluate`` gives,
for every tenant and for no tenant at all:

==========================  ============================================================
flagrail state              Unleash feature
==========================  ============================================================
killed, or not enabled      ``enabled: false`` and no strategies
tenants_on                  a ``default`` strategy with ``tenantId IN tenants_on``
rollout 100                 a ``default`` strategy
rollout 1..99               ``flexibleRollout``: ``rollout`` = the percent, ``stickiness:
                            tenantId``, ``groupId`` = the flag key, and
                            ``tenantId NOT_IN [""]`` (the empty tenant is no tenant)
rollout 0 and no            ``flexibleRollout`` at ``rollout: "0"``, which matches
tenants_on                  nobody (an enabled feature without strategies would be on
                            for everyone)
tenants_off                 ``tenantId NOT_IN tenants_off`` on every strategy
==========================  ============================================================

Unleash's engine mis-reads an ``IN``/``NOT_IN`` value that ends in a backslash (the
constraint then matches nobody) and the Node SDK trims listed values, so tenant ids
ending in a backslash, or starting or ending in whitespace, go into an
anchored ``REGEX`` constraint instead (inverted for ``tenants_off``; a strategy of
their own for ``tenants_on``). An SDK without ``REGEX`` support fails such a
constraint, which errs towards off.

Unleash ORs strategies and ANDs the constraints of one strategy, so a tenant in
``tenants_off`` fails every strategy (off), a tenant in ``tenants_on`` matches the
first one (on), and anyone else gets the rollout, hashed exactly as
``flags.bucketing`` does. Without a tenant, ``IN`` and ``flexibleRollout`` fail
and ``NOT_IN`` passes, so only rollout 100 is on, as in flagrail.

A typed flag (string, number, json) maps to a feature that is enabled for
everyone (so every Unleash SDK's ``get_variant`` serves a variant, never
"disabled"), whose strategies carry the variants (client specification 16),
first match wins:

==========================================  ======================================
strategy (each with ``NOT_IN tenants_off``)  variants
==========================================  ======================================
the on-conditions above, ``IN`` a variant's  that pinned variant
pinned tenants (one set per variant)
the on-conditions above, for any tenant      the split (weights, ``stickiness:
                                             tenantId``), else ``on_variant``
rollout 100, no tenant (split flags only)    ``on_variant``
``default``, no constraints (last)           ``off_variant``: the safe value,
                                             also for a killed or disabled flag
==========================================  ======================================

Payloads are ``string`` (a string flag), ``number`` (a number, as JSON text) or
``json`` (compact JSON text). A typed flag's ``is_enabled`` in an Unleash SDK is
therefore true for everyone: read it with ``get_variant``.

``state_from_feature`` reads both tables back (for a typed feature: variants and
values, off/on variant, split, pins and lists; ``_typed_state`` says what a feature
cannot carry).

Nothing here does I/O. Strategy parameters are strings, as the Unleash client
specification requires; tenant lists are sorted, so equal states give equal JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from flags.errors import ValidationError
from flags.model import FlagState, FlagType, Snapshot, validate_variants

__all__ = [
    "API_VERSION",
    "TENANT_FIELD",
    "feature_from_state",
    "features_payload",
    "state_from_feature",
]

API_VERSION = 2
TENANT_FIELD = "tenantId"


def _constraint(operator: str, tenants: frozenset[str]) -> dict[str, Any]:
    return {
        "contextName": TENANT_FIELD,
        "operator": operator,
        "values": sorted(tenants),
        "inverted": False,
        "caseInsensitive": False,
    }


# What Unleash's regex engine (Rust ``regex``) treats as syntax; escaping them is always valid.
_REGEX_META = frozenset("\\.+*?()|[]{}^$#&-~")


def _plain(tenant: str) -> bool:
    """Whether ``tenant`` may go into an ``IN``/``NOT_IN`` list. Unleash's engine mis-reads
    a value that ends in a backslash (the whole constraint then matches nobody), and the
    Node SDK trims every listed value (``" acme "`` would match ``"acme"`` only): such
    tenants go into a ``REGEX`` constraint instead."""
    return not (
        tenant.endswith("\\")
        or tenant[:1].isspace()
        or tenant[-1:].isspace()
        or tenant[:1] == "\ufeff"  # JavaScript's trim() also strips a BOM
        or tenant[-1:] == "\ufeff"
    )


def _regex_constraint(tenants: frozenset[str], *, inverted: bool) -> dict[str, Any]:
    """``tenantId`` is exactly one of ``tenants`` (or, ``inverted``, none of them)."""
    alternatives = (
        "".join("\\" + ch if ch in _REGEX_META else ch for ch in tenant)
        for tenant in sorted(tenants)
    )
    return {
        "contextName": TENANT_FIELD,
        "operator": "REGEX",
        "value": "^(?:" + "|".join(alternatives) + ")$",
        "inverted": inverted,
        "caseInsensitive": False,
    }


def _excluding(tenants: frozenset[str]) -> list[dict[str, Any]]:
    """Constraints that every tenant of ``tenants`` fails and everyone else passes."""
    plain = frozenset(t for t in tenants if _plain(t))
    odd = tenants - plain
    out = [_constraint("NOT_IN", plain)] if plain else []
    if odd:
        out.append(_regex_constraint(odd, inverted=True))
    return out


def _no_empty_tenant() -> dict[str, Any]:
    """``tenantId NOT_IN [""]``: the empty tenant is no tenant (as in flagrail), also for
    Unleash's engine, which would otherwise hash ``""`` into a rollout bucket. (Node
    drops empty list values, and its ``flexibleRollout`` already skips ``""``.)"""
    return _constraint("NOT_IN", frozenset({""}))


def _rollout_strategy(key: str, rollout: int) -> dict[str, Any]:
    return {
        "name": "flexibleRollout",
        "parameters": {"rollout": str(rollout), "stickiness": TENANT_FIELD, "groupId": key},
        # Rollout 0 matches nobody anyway: kept as it always was.
        "constraints": [_no_empty_tenant()] if rollout > 0 else [],
    }


def _payload(flag_type: FlagType, value: Any) -> dict[str, str]:
    if flag_type is FlagType.STRING:
        return {"type": "string", "value": str(value)}
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return {"type": "number" if flag_type is FlagType.NUMBER else "json", "value": text}


def _strategy_variants(
    state: FlagState, weights: Sequence[tuple[str, int]]
) -> list[dict[str, Any]]:
    values = {v.name: v.value for v in state.variants}
    return [
        {
            "name": name,
            "weight": weight,
            "weightType": "variable",
            "stickiness": TENANT_FIELD,
            "payload": _payload(state.type, values.get(name)),
        }
        for name, weight in weights
    ]


def _on_conditions(key: str, state: FlagState) -> list[tuple[str, dict[str, str], list[Any]]]:
    """The (strategy name, parameters, constraints) that are on for a tenant, without the
    ``tenants_off`` exclusion."""
    out: list[tuple[str, dict[str, str], list[Any]]] = []
    plain_on = frozenset(t for t in state.tenants_on if _plain(t))
    if plain_on:
        out.append(("default", {}, [_constraint("IN", plain_on)]))
    if state.tenants_on - plain_on:
        out.append(
            ("default", {}, [_regex_constraint(state.tenants_on - plain_on, inverted=False)])
        )
    if state.rollout >= 100:
        out.append(("default", {}, []))
    elif state.rollout > 0:
        rollout = _rollout_strategy(key, state.rollout)
        out.append((rollout["name"], rollout["parameters"], rollout["constraints"]))
    return out


def _typed_feature(key: str, state: FlagState) -> dict[str, Any]:
    """A string, number or json flag's feature (the module's second table)."""
    strategies: list[dict[str, Any]] = []

    def add(name: str, params: dict[str, str], constraints: list[Any], variants: Any) -> None:
        if state.tenants_off:
            constraints = [*constraints, *_excluding(state.tenants_off)]
        # Unleash picks a strategy's variant by the strategy's own stickiness and
        # groupId parameters (a default strategy without them sticks to nothing): the
        # tenant and the flag key, as flagrail's split.
        strategies.append(
            {
                "name": name,
                "parameters": {**params, "stickiness": TENANT_FIELD, "groupId": key},
                "constraints": constraints,
                "variants": _strategy_variants(state, variants),
            }
        )

    if state.enabled and not state.killed:
        conditions = _on_conditions(key, state)
        pinned: dict[str, set[str]] = {}
        for tenant, name in state.tenant_variants:
            pinned.setdefault(name, set()).add(tenant)
        for name in sorted(pinned):
            tenants = frozenset(pinned[name])
            plain = frozenset(t for t in tenants if _plain(t))
            pins = [_constraint("IN", plain)] if plain else []
            if tenants - plain:
                pins_odd = [_regex_constraint(tenants - plain, inverted=False)]
            else:
                pins_odd = []
            for strategy, params, constraints in conditions:
                for pin in (pins, pins_odd):
                    if pin:
                        add(strategy, params, [*constraints, *pin], [(name, 1000)])
        on = list(state.split) or [(state.on_variant or "", 1000)]
        for strategy, params, constraints in conditions:
            if state.split:
                # A split needs a tenant to stick to: no tenant falls through.
                constraints = [*constraints, _any_tenant()]
            add(strategy, params, constraints, on)
        if state.split and state.rollout >= 100:
            add("default", {}, [], [(state.on_variant or "", 1000)])
    strategies.append(
        {
            "name": "default",
            "parameters": {},
            "constraints": [],
            "variants": _strategy_variants(state, [(state.off_variant or "", 1000)]),
        }
    )
    return {"name": key, "enabled": True, "strategies": strategies, "variants": []}


def _any_tenant() -> dict[str, Any]:
    """``tenantId`` is present and non-empty (a valid tenant has no line breaks)."""
    return {
        "contextName": TENANT_FIELD,
        "operator": "REGEX",
        "value": ".",
        "inverted": False,
        "caseInsensitive": False,
    }


def feature_from_state(key: str, state: FlagState) -> dict[str, Any]:
    """The Unleash client API v2 feature for flag ``key`` in ``state`` (see the module tables).

    Pure and total: every ``FlagState`` maps, none raises. The result is a new
    JSON-ready dict (strings, booleans, lists and dicts only).
    """
    if state.type is not FlagType.BOOLEAN:
        return _typed_feature(key, state)
    if state.killed or not state.enabled:
        return {"name": key, "enabled": False, "strategies": [], "variants": []}
    strategies: list[dict[str, Any]] = []
    plain_on = frozenset(t for t in state.tenants_on if _plain(t))
    if plain_on:
        strategies.append(
            {"name": "default", "parameters": {}, "constraints": [_constraint("IN", plain_on)]}
        )
    if state.tenants_on - plain_on:
        strategies.append(
            {
                "name": "default",
                "parameters": {},
                "constraints": [_regex_constraint(state.tenants_on - plain_on, inverted=False)],
            }
        )
    if state.rollout >= 100:
        strategies.append({"name": "default", "parameters": {}, "constraints": []})
    elif state.rollout > 0 or not state.tenants_on:
        strategies.append(_rollout_strategy(key, max(state.rollout, 0)))
    if state.tenants_off:
        for strategy in strategies:
            strategy["constraints"].extend(_excluding(state.tenants_off))
    return {"name": key, "enabled": True, "strategies": strategies, "variants": []}


def features_payload(snapshot: Snapshot) -> dict[str, Any]:
    """The body of ``GET /api/client/features`` for ``snapshot``: ``version``,
    ``features`` (sorted by name) and ``segments`` (always empty)."""
    return {
        "version": API_VERSION,
        "features": [
            feature_from_state(key, snapshot.flags[key]) for key in sorted(snapshot.flags)
        ],
        "segments": [],
    }


def _regex_tenants(value: object) -> frozenset[str] | None:
    """The tenants of a ``_regex_constraint`` value, else None (any other regex)."""
    if not isinstance(value, str) or not value.startswith("^(?:") or not value.endswith(")$"):
        return None
    body = value[4:-2]
    tenants: list[str] = []
    current: list[str] = []
    chars = iter(body)
    for ch in chars:
        if ch == "\\":
            escaped = next(chars, None)
            if escaped is None or escaped not in _REGEX_META:
                return None
            current.append(escaped)
        elif ch == "|":
            tenants.append("".join(current))
            current = []
        elif ch in _REGEX_META:
            return None
        else:
            current.append(ch)
    tenants.append("".join(current))
    return frozenset(tenants) if all(tenants) else None


def _tenant_constraint(constraint: object) -> tuple[str, frozenset[str]] | None:
    """``(operator, tenants)`` of a ``tenantId IN``/``NOT_IN`` constraint, or of the
    ``REGEX`` form ``feature_from_state`` writes (as ``IN``/``NOT_IN``), else None."""
    if not isinstance(constraint, Mapping):
        return None
    if (
        constraint.get("contextName") == TENANT_FIELD
        and constraint.get("operator") == "REGEX"
        and constraint.get("caseInsensitive", False) is False
        and type(constraint.get("inverted", False)) is bool
    ):
        tenants = _regex_tenants(constraint.get("value"))
        if tenants is None:
            return None
        return ("NOT_IN" if constraint.get("inverted") else "IN"), tenants
    values = constraint.get("values")
    if (
        constraint.get("contextName") != TENANT_FIELD
        or constraint.get("operator") not in ("IN", "NOT_IN")
        or constraint.get("inverted", False) is not False
        or constraint.get("caseInsensitive", False) is not False
        or not isinstance(values, list)
        or not all(isinstance(v, str) for v in values)
    ):
        return None
    return str(constraint["operator"]), frozenset(values)


def _strategy_parts(
    key: str, strategy: object
) -> tuple[frozenset[str] | None, int | None, frozenset[str]] | None:
    """Decompose one strategy into ``(tenants_on, rollout, tenants_off)``, else None.

    Exactly one of ``tenants_on`` and ``rollout`` is set.
    """
    if not isinstance(strategy, Mapping):
        return None
    constraints = strategy.get("constraints") or []
    if strategy.get("segments") or not isinstance(constraints, list):
        return None
    on: frozenset[str] | None = None
    off: frozenset[str] = frozenset()
    for constraint in constraints:
        parsed = _tenant_constraint(constraint)
        if parsed is None:
            return None
        operator, tenants = parsed
        if operator == "IN" and on is None:
            on = tenants
        elif operator == "NOT_IN":
            # Plain NOT_IN and an inverted REGEX both exclude; "" is the empty-tenant guard.
            off = off | (tenants - {""})
        else:
            return None
    name = strategy.get("name")
    params = strategy.get("parameters") or {}
    if not isinstance(params, Mapping):
        return None
    if name == "default":
        return (on, None, off) if on is not None else (None, 100, off)
    if name == "flexibleRollout" and on is None:
        raw = params.get("rollout")
        if (
            params.get("stickiness") != TENANT_FIELD
            or params.get("groupId") != key
            or not isinstance(raw, str)
            or not raw.isdigit()
            or not 0 <= int(raw) <= 100
        ):
            return None
        return None, int(raw), off
    return None


_PAYLOAD_TYPES = {"string": FlagType.STRING, "number": FlagType.NUMBER, "json": FlagType.JSON}


def _variant_value(payload: object) -> tuple[FlagType, Any] | None:
    """``(type, value)`` of a variant payload ``_payload`` writes, else None."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("value"), str):
        return None
    flag_type = _PAYLOAD_TYPES.get(payload.get("type"))  # type: ignore[arg-type]
    text = payload["value"]
    if flag_type is None:
        return None
    if flag_type is FlagType.STRING:
        return flag_type, text
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if flag_type is FlagType.NUMBER and (type(value) not in (int, float)):
        return None
    return flag_type, value


def _typed_state(key: str, strategies: Sequence[Any]) -> FlagState | None:
    """The typed state whose feature (``_typed_feature``) is exactly ``strategies``, or None.

    Guesses the state from the strategies' layout (pins, then the on-conditions, then
    the no-tenant ``on_variant``, then the ``off_variant`` default) and keeps the guess
    only if mapping it back gives the same strategies, so a read-back state always
    serves what the feature serves. What the feature cannot say is not read back: a
    declared variant no strategy serves, the ``on_variant`` of a split that rolls out
    below 100% (never served), and a kill (the feature of a killed flag is the one of
    a disabled flag).
    """
    values: dict[str, Any] = {}
    flag_type: FlagType | None = None
    weights: list[list[tuple[str, int]]] = []
    for strategy in strategies:
        if not isinstance(strategy, Mapping) or not isinstance(strategy.get("variants"), list):
            return None
        pairs: list[tuple[str, int]] = []
        for variant in strategy["variants"]:
            if not isinstance(variant, Mapping) or not isinstance(variant.get("name"), str):
                return None
            parsed = _variant_value(variant.get("payload"))
            if parsed is None or (flag_type is not None and parsed[0] is not flag_type):
                return None
            flag_type, value = parsed
            name = variant["name"]
            if name in values and values[name] != value:
                return None
            values[name] = value
            weight = variant.get("weight")
            if type(weight) is not int:
                return None
            pairs.append((name, weight))
        weights.append(pairs)
    if flag_type is None or len(weights[-1]) != 1:
        return None
    try:
        variants = validate_variants(
            flag_type, [{"name": n, "value": v} for n, v in values.items()]
        )
    except ValidationError:
        return None
    off_variant = weights[-1][0][0]
    base = FlagState(
        enabled=False,
        type=flag_type,
        variants=variants,
        off_variant=off_variant,
        on_variant=off_variant,
    )
    candidates = [base] if len(strategies) == 1 else []
    body = list(strategies[:-1])
    if body:
        first = _constraints_of(body[0])
        offs = frozenset().union(*(t for op, t in map(_tenant_parts, first) if op == "NOT_IN")) - {
            ""
        }
        excluded = len(_excluding(offs)) if offs else 0
        for no_tenant in (0, 1):
            rest = body[: len(body) - no_tenant]
            for conditions in (1, 2, 3):
                guess = _guess_typed(key, base, rest, weights, conditions, excluded, offs)
                if guess is not None and no_tenant and guess.split:
                    guess = replace(guess, on_variant=weights[-2][0][0])
                if guess is not None:
                    candidates.append(guess)
    want = json.dumps(list(strategies), sort_keys=True)
    for candidate in candidates:
        try:
            candidate = candidate.check_variants()
        except ValidationError:
            continue
        got = _typed_feature(key, candidate)["strategies"]
        if json.dumps(got, sort_keys=True) == want:
            return candidate
    return None


def _constraints_of(strategy: Mapping[str, Any]) -> list[Any]:
    constraints = strategy.get("constraints") or []
    return list(constraints) if isinstance(constraints, list) else []


def _tenant_parts(constraint: object) -> tuple[str | None, frozenset[str]]:
    parsed = _tenant_constraint(constraint)
    return (None, frozenset()) if parsed is None else parsed


def _guess_typed(
    key: str,
    base: FlagState,
    strategies: list[Any],
    weights: list[list[tuple[str, int]]],
    conditions: int,
    excluded: int,
    offs: frozenset[str],
) -> FlagState | None:
    """The state ``_typed_state`` tries: the last ``conditions`` strategies are the
    on-conditions, every strategy before them a pin (its last own constraint)."""
    if len(strategies) < conditions or len(strategies) % conditions:
        return None
    own = [_constraints_of(s)[: len(_constraints_of(s)) - excluded] for s in strategies]
    on_block = own[-conditions:]
    tenants_on: set[str] = set()
    rollout = 0
    split: tuple[tuple[str, int], ...] = ()
    first = len(strategies) - conditions
    for offset, constraints in enumerate(on_block):
        strategy = strategies[first + offset]
        if constraints and constraints[-1] == _any_tenant():
            split = tuple(weights[first + offset])
            constraints = constraints[:-1]
        params = strategy.get("parameters") or {}
        if strategy.get("name") == "flexibleRollout":
            raw = params.get("rollout") if isinstance(params, Mapping) else None
            if not isinstance(raw, str) or not raw.isdigit():
                return None
            rollout = int(raw)
        elif not constraints:
            rollout = 100
        else:
            op, tenants = _tenant_parts(constraints[0])
            if op != "IN":
                return None
            tenants_on |= tenants
    on_pairs = weights[len(strategies) - 1]
    on_variant = on_pairs[0][0] if on_pairs else None
    pins: dict[str, str] = {}
    for index, constraints in enumerate(own[:-conditions]):
        op, tenants = _tenant_parts(constraints[-1]) if constraints else (None, frozenset())
        if op != "IN" or len(weights[index]) != 1:
            return None
        for tenant in tenants:
            pins[tenant] = weights[index][0][0]
    return replace(
        base,
        enabled=True,
        rollout=rollout,
        tenants_on=frozenset(tenants_on),
        tenants_off=offs,
        on_variant=on_variant,
        split=split,
        tenant_variants=tuple(sorted(pins.items())),
    )


def state_from_feature(feature: Mapping[str, Any]) -> FlagState | None:
    """The flagrail state an Unleash feature expresses, or None if it is not flagrail-shaped.

    Inverse of ``feature_from_state`` up to evaluation: for every tenant the
    returned state evaluates as the feature does. Features whose strategies use
    anything but ``default`` / ``flexibleRollout`` (tenant stickiness, the flag key
    as ``groupId``) and ``tenantId IN`` / ``NOT_IN`` constraints give None, and so
    do features with segments or dependencies. A feature whose strategies carry
    variants reads back as a typed flag only when it is exactly what
    ``feature_from_state`` writes for some state (else None). A disabled feature gives a
    disabled state (Unleash has no kill switch, so ``killed`` is never set). An
    enabled feature without strategies is on for everyone (rollout 100), as in
    Unleash. Pure; never raises for a mapping.
    """
    key = feature.get("name")
    enabled = feature.get("enabled")
    strategies = feature.get("strategies") or []
    if not isinstance(key, str) or type(enabled) is not bool or feature.get("dependencies"):
        return None
    if not isinstance(strategies, Sequence) or isinstance(strategies, str):
        return None
    if any(isinstance(s, Mapping) and s.get("variants") for s in strategies):
        return _typed_state(key, strategies) if enabled and not feature.get("variants") else None
    if not enabled:
        return FlagState(enabled=False)
    if not strategies:
        return FlagState(enabled=True, rollout=100)
    parts = [_strategy_parts(key, s) for s in strategies]
    if any(p is None for p in parts):
        return None
    offs = {p[2] for p in parts if p is not None}
    ons = [p[0] for p in parts if p is not None and p[0] is not None]
    rollouts = [p[1] for p in parts if p is not None and p[1] is not None]
    if len(offs) != 1 or len(rollouts) > 1:
        return None
    return FlagState(
        enabled=True,
        rollout=rollouts[0] if rollouts else 0,
        tenants_on=frozenset().union(*ons),  # strategies OR: one IN, maybe one REGEX
        tenants_off=offs.pop(),
    )
