"""What a run of the incident demo prints: the timeline, the summary beside the incident's
figures and the targets, the JSON, and a plot for the post-mortem.

Pure formatting except ``plot`` (writes a PNG with matplotlib, imported lazily).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "INCIDENT",
    "TargetResult",
    "evaluate_targets",
    "format_report",
    "format_summary",
    "format_timeline",
    "plot",
    "summary_json",
]

# The figures of the incident this demo replays (../shared/incident.txt).
INCIDENT = {
    "time_to_mitigation": "23 min (faulty push 10:52, rollback complete 11:15)",
    "detection": "alert after 2 min, incident response after 7 min",
    "impact": "most API-key requests answered 401",
    "redeploys": "1 (a rollback)",
}

# Plot annotations, in the order events are drawn.
_EVENT_STYLE = {
    "stage": ("tab:blue", ":"),
    "fault": ("tab:red", "-"),
    "first_wrong_answer": ("tab:orange", "--"),
    "guard_trip": ("tab:purple", "--"),
    "kill": ("black", "-"),
    "mitigated": ("tab:green", "-"),
    "recovery": ("tab:green", ":"),
    "rollout_halted": ("tab:gray", ":"),
}


@dataclass(frozen=True, slots=True)
class TargetResult:
    """One target of the issue, checked against a summary."""

    name: str
    value: Any
    target: str
    met: bool


def evaluate_targets(summary: Mapping[str, Any]) -> list[TargetResult]:
    """The issue's targets for ``summary["fault"]``, each with the measured value.

    Every fault: 0 false acceptances, revocation p99 <= 100 ms, 0 redeploys and
    the kill in the history with a guard as actor. ``corrupt-bytes``: 0 false
    rejections. ``wrong-payload`` and ``serializer``: mitigation <= 1.0 s after the
    first wrong answer and false rejections <= 0.5 % of requests. ``redis-down`` and
    ``redis-slow``: 0 false rejections and p99 latency at most 60 ms above the
    loader's own.
    """
    fault = summary.get("fault")
    total = int(summary.get("requests_total") or 0)
    out = [
        TargetResult(
            "false_acceptances",
            summary["false_acceptances"],
            "0",
            summary["false_acceptances"] == 0,
        ),
    ]
    rev = summary.get("revocation_p99_ms")
    out.append(TargetResult("revocation_p99_ms", rev, "<= 100", rev is not None and rev <= 100))
    out.append(TargetResult("redeploys", summary["redeploys"], "0", summary["redeploys"] == 0))
    actors = [row.get("actor", "") for row in summary.get("kill_history") or []]
    out.append(
        TargetResult(
            "kill_history",
            actors[0] if actors else None,
            "a kill by guard:<host>:<pid>",
            any(a.startswith("guard:") for a in actors),
        )
    )
    fr = int(summary["false_rejections"])
    if fault in ("wrong-payload", "serializer"):
        ttm = summary.get("time_to_mitigation_s")
        out.append(
            TargetResult("time_to_mitigation_s", ttm, "<= 1.0", ttm is not None and ttm <= 1.0)
        )
        share = fr / total if total else 0.0
        out.append(
            TargetResult(
                "false_rejections", f"{fr} ({share:.2%})", "<= 0.5% of requests", share <= 0.005
            )
        )
    else:
        out.append(TargetResult("false_rejections", fr, "0", fr == 0))
    if fault in ("redis-down", "redis-slow"):
        lat = summary.get("latency") or {}
        p99, loader = lat.get("p99_ms_during_fault"), lat.get("loader_p99_ms")
        ok = p99 is not None and loader is not None and p99 <= loader + 60
        out.append(
            TargetResult(
                "latency p99 during fault (ms)",
                p99,
                f"<= loader's own p99 + 60 ({(loader or 0) + 60:.1f})",
                ok,
            )
        )
    return out


def summary_json(summary: Mapping[str, Any]) -> str:
    """``--json``: the summary object (with its ``timeline``), nothing else."""
    return json.dumps(summary, indent=2, sort_keys=False, default=str)


def format_timeline(timeline: Sequence[Mapping[str, Any]]) -> str:
    lines = ["TIMELINE (seconds since start)"]
    for event in timeline:
        lines.append(f"  +{event['t']:8.3f}s  {event['event']:<19} {event.get('detail', '')}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary fields beside the targets and the incident's figures."""
    total = summary["requests_total"]
    fr = summary["false_rejections"]
    ttm = summary.get("time_to_mitigation_s")
    lat = summary.get("latency") or {}
    rows = [
        ("requests_total", _fmt(total), "", ""),
        (
            "false_rejections",
            f"{fr} ({fr / total:.2%})" if total else str(fr),
            "",
            INCIDENT["impact"],
        ),
        ("false_acceptances", _fmt(summary["false_acceptances"]), "", ""),
        ("revocation_p99_ms", _ms(summary.get("revocation_p99_ms")), "", ""),
        (
            "time_to_mitigation_s",
            _fmt(ttm) if ttm is not None else "not mitigated",
            "",
            INCIDENT["time_to_mitigation"],
        ),
        ("redeploys", _fmt(summary["redeploys"]), "", INCIDENT["redeploys"]),
        (
            "latency p99 (ms)",
            f"{_ms(lat.get('p99_ms_during_fault'))} during the fault, "
            f"{_ms(lat.get('loader_p99_ms'))} from the loader before it",
            "",
            "",
        ),
    ]
    targets = {t.name.split(" ")[0]: t for t in evaluate_targets(summary)}
    out = []
    for name, value, _t, incident in rows:
        key = "latency" if name.startswith("latency") else name
        target = targets.get(key)
        mark = ""
        if target is not None:
            mark = f"{'met' if target.met else 'MISSED'}: {target.target}"
        out.append((name, value, mark, incident))
    kill = summary.get("kill_history") or []
    for row in kill:
        out.append(
            (
                "kill_history",
                f"{row.get('at')} {row.get('actor')} {row.get('action')} "
                f"{row.get('flag')} in {row.get('environment')}",
                "met" if str(row.get("actor", "")).startswith("guard:") else "",
                "",
            )
        )
    if not kill:
        out.append(("kill_history", "no kill recorded", "MISSED: a kill by the guard", ""))
    widths = [max(len(r[i]) for r in [*out, _HEADER]) for i in range(4)]
    lines = [
        "SUMMARY",
        "  " + "  ".join(h.ljust(w) for h, w in zip(_HEADER, widths, strict=True)).rstrip(),
    ]
    for row in out:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


_HEADER = ("measure", "this run", "target", "the incident")


def format_report(summary: Mapping[str, Any]) -> str:
    """Everything a person reads after a run: the timeline, then the summary and a verdict."""
    targets = evaluate_targets(summary)
    missed = [t for t in targets if not t.met]
    verdict = (
        "every target met"
        if not missed
        else "MISSED: " + ", ".join(f"{t.name} = {t.value} (target {t.target})" for t in missed)
    )
    head = f"The incident, replayed with fault {summary['fault']!r}: {verdict}"
    return "\n\n".join(
        [head, format_timeline(summary.get("timeline") or []), format_summary(summary)]
    )


def plot(
    summary: Mapping[str, Any],
    series: Sequence[Mapping[str, float]],
    path: str | Path,
    *,
    fine: Sequence[Mapping[str, float]] = (),
    bin_seconds: float = 0.5,
    fine_seconds: float = 0.1,
) -> Path:
    """Draw requests/s and 401/s over time with the timeline's events marked; write a PNG.

    Top: the whole run (``series``, one row per ``bin_seconds``). Bottom, when
    ``fine`` rows (per ``fine_seconds``) are given: a close-up from just before the
    fault to just after recovery, where the seconds that matter are readable.
    Rows hold ``t`` (bin start, seconds since the run began), ``requests``,
    ``rejected`` (401 and 403) and ``false_rejections``. Raises ``OSError`` if
    ``path`` cannot be written, ``ImportError`` without matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = list(summary.get("timeline") or [])
    fault_at = next((e["t"] for e in timeline if e["event"] == "fault"), None)
    mitigated_at = next((e["t"] for e in timeline if e["event"] == "mitigated"), None)
    recovery_at = next((e["t"] for e in timeline if e["event"] == "recovery"), None)
    zoom = bool(fine) and fault_at is not None
    fig, axes = plt.subplots(
        2 if zoom else 1,
        1,
        figsize=(11, 8.2 if zoom else 5.2),
        dpi=110,
        gridspec_kw={"height_ratios": [1, 1]} if zoom else None,
        squeeze=False,
    )
    ttm = summary.get("time_to_mitigation_s")
    fr, total = summary["false_rejections"], summary["requests_total"]
    fig.suptitle(
        f"Exam platform API-key auth, second cache layer rolled out, fault {summary['fault']}: "
        + (
            f"layer off everywhere {ttm:.2f} s after the first wrong answer"
            if ttm is not None
            else "not mitigated"
        )
        + f"\n{fr} of {total} requests wrongly rejected, {summary['redeploys']} redeploys"
        + "  (the incident: 23 min to roll back, most requests answered 401)",
        fontsize=9.5,
    )
    top = axes[0][0]
    _draw_rates(top, series, bin_seconds)
    _draw_events(
        top, timeline, lambda e: e["event"] in ("stage", "fault", "mitigated", "rollout_halted")
    )
    if fault_at is not None:
        end = (
            mitigated_at if mitigated_at is not None else (series[-1]["t"] if series else fault_at)
        )
        top.axvspan(
            fault_at,
            max(end, fault_at + bin_seconds / 4),
            color="tab:red",
            alpha=0.12,
            label="fault live and layer on",
        )
    top.set_title("the whole run", fontsize=9, loc="left")
    top.legend(loc="center left", fontsize=8)
    if zoom:
        assert fault_at is not None
        lo = fault_at - 1.0
        hi = max(x for x in (fault_at + 3.0, (recovery_at or 0) + 2.0, (mitigated_at or 0) + 2.0))
        rows = [r for r in fine if lo <= r["t"] <= hi]
        ax = axes[1][0]
        _draw_rates(ax, rows, fine_seconds)
        ax.set_xlim(lo, hi)
        if mitigated_at is not None:
            ax.axvspan(fault_at, max(mitigated_at, fault_at + 0.02), color="tab:red", alpha=0.12)
        _draw_events(ax, timeline, lambda e: lo <= e["t"] <= hi and e["event"] != "revocation")
        ax.set_title(f"close-up of the fault, per {fine_seconds:g} s", fontsize=9, loc="left")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def _draw_rates(ax: Any, rows: Sequence[Mapping[str, float]], width: float) -> None:
    per_s = 1.0 / width
    ts = [r["t"] + width / 2 for r in rows]
    ax.plot(ts, [r["requests"] * per_s for r in rows], color="tab:blue", label="requests/s")
    ax.plot(
        ts,
        [r["rejected"] * per_s for r in rows],
        color="tab:red",
        label="401/s, all (never-issued and revoked keys included)",
    )
    ax.plot(
        ts,
        [r["false_rejections"] * per_s for r in rows],
        color="tab:orange",
        linestyle="--",
        label="401/s of valid keys (false rejections)",
    )
    peak = max([r["requests"] * per_s for r in rows] or [1.0])
    ax.set_ylim(0, peak * 1.5)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("per second")
    ax.grid(alpha=0.3)


def _draw_events(ax: Any, timeline: Sequence[Mapping[str, Any]], keep: Any) -> None:
    """Vertical lines for the events ``keep`` selects, labels staggered so none overlap."""
    top = ax.get_ylim()[1]
    x0, x1 = ax.get_xlim()
    close = (x1 - x0) / 9  # labels nearer than this go on different rows
    placed: list[tuple[float, int]] = []
    for event in timeline:
        style = _EVENT_STYLE.get(event["event"])
        if style is None or not keep(event):
            continue
        color, linestyle = style
        t = event["t"]
        ax.axvline(t, color=color, linestyle=linestyle, linewidth=1)
        busy = {row for (x, row) in placed if abs(x - t) < close}
        row = next(r for r in range(len(placed) + 1) if r not in busy) % 8
        placed.append((t, row))
        label = event.get("label") or event["event"].replace("_", " ")
        ax.text(
            t,
            top * (0.97 - 0.055 * row),
            " " + label,
            color=color,
            fontsize=7.5,
            va="top",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5},
        )
