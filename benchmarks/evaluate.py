"""Per-call cost of a flag check: flagrail against UnleashClient, LaunchDarkly and GrowthBook.

One run, one table: each SDK evaluates the same four flag shapes (plain on; on for
a list of 100 tenants; a 50% rollout; a string flag split 3 ways, 200/300/500,
sticky per tenant), fed from local data (no server), for
``--calls`` calls each (default 1,000,000), cycling through 1,000 tenants. Each
peer gets its most favourable setup: its per-tenant context objects (Unleash
context dicts, LaunchDarkly ``Context``, one GrowthBook per tenant) are built
before the clock starts. The first three shapes are boolean checks (flagrail
``is_enabled``); the split is each SDK's variant call: flagrail ``value()``,
UnleashClient ``get_variant``, LaunchDarkly ``variation`` on a string flag,
GrowthBook ``get_feature_value``. flagrail's ``value()`` remembers, per flag state, the
split entry of up to ``MEMO_PER_FLAG`` tenants (``flags.compiled.Refinement``), so the
split is also timed over 200,000 distinct tenants, past that memo. Then the RSS of one
process holding 10,000 flags x 4 environments in flagrail clients (one per
environment, as a service would).

    .venv/bin/python benchmarks/evaluate.py [--calls 1000000] [--skip-peers]

Peers come with ``pip install -e '.[bench]'``; a missing one is reported, not fatal.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TENANTS = [f"tenant-{i:05d}" for i in range(1000)]
LISTED = TENANTS[::10]  # 100 tenants
SPLIT = "3-way split"
SHAPES = ("plain on", "100-tenant list", "50% rollout", SPLIT)
KEYS = {"plain on": "plain", "100-tenant list": "listed", "50% rollout": "rollout", SPLIT: "tier"}
TARGETS = {"plain on": 0.5, "50% rollout": 1.0, SPLIT: 0.5}
TIERS = (("gold", 200), ("silver", 300), ("bronze", 500))
MANY_TENANTS = 200_000

# flagrail's value(), kept by its setup to be timed also without the table's wrapper.
DIRECT: dict[str, Callable[..., Any]] = {}

# A setup returns (boolean check, variant check, per-tenant contexts).
Setup = tuple[Callable[[str, Any], Any], Callable[[str, Any], Any], list[Any]]


def timed(
    call: Callable[[str, Any], Any], key: str, contexts: list[Any], calls: int, rounds: int
) -> float:
    """Microseconds per ``call(key, context)``: ``calls`` calls (contexts cycled) split in
    ``rounds`` rounds; the fastest round counts (the least disturbed by other load)."""
    per_round = max(1, calls // rounds)
    seq = (contexts * (per_round // len(contexts) + 1))[:per_round]
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for ctx in seq:
                call(key, ctx)
            elapsed = time.perf_counter() - start
        finally:
            gc.enable()
        best = min(best, elapsed / per_round * 1e6)
    return best


def timed_value_direct(calls: int, rounds: int, tenants: list[str] = TENANTS) -> float:
    """Microseconds per ``client.value("tier", "none", tenant)`` called directly in the
    loop (the table's cell adds one Python wrapper call, as every peer's cell does),
    cycling through ``tenants``."""
    value = DIRECT["value"]
    per_round = max(1, calls // rounds)
    seq = (tenants * (per_round // len(tenants) + 1))[:per_round]
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            for tenant in seq:
                value("tier", "none", tenant)
            elapsed = time.perf_counter() - start
        finally:
            gc.enable()
        best = min(best, elapsed / per_round * 1e6)
    return best


# ------------------------------------------------------------------ the SDKs
def flagrail_setup() -> Setup:
    from flags import FlagClient

    client = FlagClient.from_snapshot(
        {
            "environment": "production",
            "version": 1,
            "flags": {
                "plain": {"enabled": True, "rollout": 100},
                "listed": {"enabled": True, "rollout": 0, "tenants_on": LISTED},
                "rollout": {"enabled": True, "rollout": 50},
                "tier": {
                    "enabled": True,
                    "rollout": 100,
                    "type": "string",
                    "variants": [{"name": n, "value": n.upper()} for n, _ in TIERS],
                    "off_variant": "bronze",
                    "on_variant": "bronze",
                    "split": [{"variant": n, "weight": w} for n, w in TIERS],
                },
            },
        }
    )
    value = client.value
    assert value("tier", "none", TENANTS[0]) in ("GOLD", "SILVER", "BRONZE")
    DIRECT["value"] = value

    def variant(key: str, tenant: Any) -> Any:
        return value(key, "none", tenant)

    return client.is_enabled, variant, list(TENANTS)


def unleash_setup(tmp: Path) -> Setup:
    from UnleashClient import UnleashClient
    from UnleashClient.cache import FileCache

    features = {
        "version": 1,
        "features": [
            {"name": "plain", "enabled": True, "strategies": [{"name": "default"}]},
            {
                "name": "listed",
                "enabled": True,
                "strategies": [{"name": "userWithId", "parameters": {"userIds": ",".join(LISTED)}}],
            },
            {
                "name": "rollout",
                "enabled": True,
                "strategies": [
                    {
                        "name": "flexibleRollout",
                        "parameters": {
                            "rollout": "50",
                            "stickiness": "userId",
                            "groupId": "rollout",
                        },
                    }
                ],
            },
            {
                "name": "tier",
                "enabled": True,
                "strategies": [{"name": "default"}],
                "variants": [
                    {
                        "name": n,
                        "weight": w,
                        "stickiness": "userId",
                        "payload": {"type": "string", "value": n.upper()},
                    }
                    for n, w in TIERS
                ],
            },
        ],
    }
    cache = FileCache("flagrail-bench", directory=str(tmp))
    cache.bootstrap_from_dict(features)
    client = UnleashClient(
        url="http://127.0.0.1:9",
        app_name="flagrail-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)
    assert client.is_enabled("plain"), "UnleashClient did not load the bootstrap"
    assert client.get_variant("tier", {"userId": TENANTS[0]})["name"] in dict(TIERS)
    return client.is_enabled, client.get_variant, [{"userId": t} for t in TENANTS]


def launchdarkly_setup(tmp: Path) -> Setup:
    from ldclient import Config, Context, LDClient
    from ldclient.integrations import Files

    def flag(key: str, **extra: Any) -> dict[str, Any]:
        return {
            "key": key,
            "on": True,
            "variations": [True, False],
            "offVariation": 1,
            "fallthrough": {"variation": 0},
            "targets": [],
            "rules": [],
            "prerequisites": [],
            "salt": key,
            "version": 1,
            **extra,
        }

    data = {
        "flags": {
            "plain": flag("plain"),
            "listed": flag(
                "listed", targets=[{"values": LISTED, "variation": 0}], fallthrough={"variation": 1}
            ),
            "rollout": flag(
                "rollout",
                fallthrough={
                    "rollout": {
                        "variations": [
                            {"variation": 0, "weight": 50000},
                            {"variation": 1, "weight": 50000},
                        ]
                    }
                },
            ),
            "tier": flag(
                "tier",
                variations=[n.upper() for n, _ in TIERS],
                offVariation=2,
                fallthrough={
                    "rollout": {
                        "variations": [
                            {"variation": i, "weight": w * 100} for i, (_, w) in enumerate(TIERS)
                        ]
                    }
                },
            ),
        }
    }
    path = tmp / "ld-flags.json"
    path.write_text(json.dumps(data))
    config = Config(
        sdk_key="bench",
        update_processor_class=Files.new_data_source(paths=[str(path)]),
        send_events=False,
        diagnostic_opt_out=True,
    )
    client = LDClient(config=config, start_wait=5)
    contexts = [Context.create(t) for t in TENANTS]
    assert client.variation("plain", contexts[0], False) is True, "LaunchDarkly did not load"

    def check(key: str, ctx: Any) -> Any:
        return client.variation(key, ctx, False)

    def variant(key: str, ctx: Any) -> Any:
        return client.variation(key, ctx, "none")

    assert variant("tier", contexts[0]) in ("GOLD", "SILVER", "BRONZE")
    return check, variant, contexts


def growthbook_setup() -> Setup:
    from growthbook import GrowthBook

    features = {
        "plain": {"defaultValue": True},
        "listed": {
            "defaultValue": False,
            "rules": [{"condition": {"id": {"$in": LISTED}}, "force": True}],
        },
        "rollout": {
            "defaultValue": False,
            "rules": [{"force": True, "coverage": 0.5, "hashAttribute": "id"}],
        },
        "tier": {
            "defaultValue": "none",
            "rules": [
                {
                    "key": "tier",
                    "variations": [n.upper() for n, _ in TIERS],
                    "weights": [w / 1000 for _, w in TIERS],
                    "hashAttribute": "id",
                }
            ],
        },
    }
    books = [GrowthBook(attributes={"id": t}, features=features) for t in TENANTS]
    assert books[0].is_on("plain"), "GrowthBook did not load"

    def check(key: str, book: Any) -> Any:
        return book.is_on(key)

    def variant(key: str, book: Any) -> Any:
        return book.get_feature_value(key, "none")

    assert variant("tier", books[0]) in ("GOLD", "SILVER", "BRONZE")
    return check, variant, books


# ------------------------------------------------------------------ memory
MEMORY_CHILD = r"""
import gc, json, sys
def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
from flags import FlagClient
from flags.model import FlagState, Snapshot
gc.collect()
before = rss()
clients = []
for env in ("development", "staging", "beta", "production"):
    flags = {}
    for i in range(10_000):
        tenants = frozenset(f"tenant-{j}" for j in range(10)) if i % 10 == 0 else frozenset()
        flags[f"team{i % 50}.feature-{i:05d}"] = FlagState(
            enabled=i % 3 != 0, rollout=(i * 7) % 101, tenants_on=tenants, version=i % 40 + 1
        )
    clients.append(FlagClient.from_snapshot(Snapshot(env, 1000, flags)))
gc.collect()
after = rss()
print(json.dumps({"bytes": after - before, "flags": sum(len(c.flag_keys()) for c in clients)}))
"""


def measure_memory() -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# ------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="calls per SDK and shape")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per cell; the best counts")
    parser.add_argument("--skip-peers", action="store_true", help="flagrail only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)

    tmp = Path(tempfile.mkdtemp(prefix="flagrail-bench-"))
    sdks: dict[str, Callable[[], Setup]] = {"flagrail": flagrail_setup}
    if not args.skip_peers:
        sdks["UnleashClient"] = lambda: unleash_setup(tmp)
        sdks["LaunchDarkly"] = lambda: launchdarkly_setup(tmp)
        sdks["GrowthBook"] = growthbook_setup
    results: dict[str, dict[str, float | None]] = {}
    notes: list[str] = []
    for name, setup in sdks.items():
        try:
            call, variant, contexts = setup()
        except Exception as exc:  # a missing or broken peer must not end the run
            notes.append(f"{name}: not measured ({type(exc).__name__}: {exc})")
            results[name] = dict.fromkeys(SHAPES)
            continue
        results[name] = {
            shape: timed(
                variant if shape == SPLIT else call, KEYS[shape], contexts, args.calls, args.rounds
            )
            for shape in SHAPES
        }
        print(f"measured {name}", file=sys.stderr)

    print(
        f"\nPer-call time in microseconds, {args.calls:,} calls per cell (best of "
        f"{args.rounds} rounds), "
        f"Python {platform.python_version()}, {platform.machine()}"
    )
    names = list(results)
    header = f"| {'flag shape':<16} | " + " | ".join(f"{n:>13}" for n in names)
    if "UnleashClient" in results:
        header += " | flagrail vs Unleash"
    print(header + " |")
    print("|" + "-" * (len(header) - 1) + "|")
    for shape in SHAPES:
        cells = []
        for n in names:
            v = results[n][shape]
            cells.append(f"{v:>13.3f}" if v is not None else f"{'n/a':>13}")
        row = f"| {shape:<16} | " + " | ".join(cells)
        ours, theirs = results["flagrail"][shape], results.get("UnleashClient", {}).get(shape)
        if "UnleashClient" in results:
            ratio = f"{theirs / ours:.0f}x faster" if ours and theirs else "n/a"
            row += f" | {ratio:>19}"
        print(row + " |")
    for note in notes:
        print(note)
    if "value" in DIRECT:
        direct = timed_value_direct(args.calls, args.rounds)
        print(f"flagrail value() on the 3-way split, called directly: {direct:.3f} us")
        from flags.compiled import MEMO_PER_FLAG

        # Past the tenant memo's bound: each round calls every one of MANY_TENANTS once,
        # so all but the few thousand memoized validate and hash their tenant.
        many = [f"user-{i:07d}" for i in range(MANY_TENANTS)]
        cold = timed_value_direct(MANY_TENANTS * args.rounds, args.rounds, many)
        print(
            f"  the same over {MANY_TENANTS:,} distinct tenants (past the memo's "
            f"{MEMO_PER_FLAG:,} per flag, so hashed per call): {cold:.3f} us"
        )

    memory = measure_memory()
    mb = memory["bytes"] / 1e6
    print(
        f"\nMemory: {memory['flags']:,} flag states (10,000 flags x 4 environments) held by "
        f"flagrail clients: {mb:.1f} MB RSS (target <= 50 MB)"
    )
    print(
        "\nTargets: plain <= 0.5 us, rollout <= 1 us, value() on a 3-way split <= 0.5 us, "
        ">= 15x faster than UnleashClient"
    )
    for shape, target in TARGETS.items():
        value = results["flagrail"][shape]
        verdict = "met" if value is not None and value <= target else "MISSED"
        print(f"  {shape}: {value:.3f} us (target {target} us): {verdict}")
    if "UnleashClient" in results:
        ratios = [
            (results["UnleashClient"][s] or 0) / (results["flagrail"][s] or 1) for s in SHAPES
        ]
        verdict = "met" if min(ratios) >= 15 else "MISSED"
        print(f"  speed-up vs UnleashClient: {min(ratios):.0f}x at least (target 15x): {verdict}")
    print(f"  memory: {mb:.1f} MB (target 50 MB): {'met' if mb <= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
