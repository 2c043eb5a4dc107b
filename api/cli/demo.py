"""``flagrail demo incident``: the incident of ../shared/incident.txt, replayed on this machine.

Starts an admin API on a SQLite database of its own, the exam platform
(``api/demo``) in two processes, Redis (``FLAGRAIL_REDIS_URL``, else
a throwaway ``redis-server``) and a load generator; rolls the platform's new
Redis cache layer out in stages, breaks it with ``--fault`` during the rollout,
and prints the timeline and the summary beside the incident's figures.

``--json`` prints only the summary object (with its ``timeline``) on stdout;
progress always goes to stderr. Exit status 0 when every target of the fault
was met, 1 when one was missed (the report names it).
"""

from __future__ import annotations

import sys
import time
from enum import StrEnum
from pathlib import Path
from types import ModuleType

import typer

from api.cli.output import CliError

app = typer.Typer(help="Demonstrations that run on this machine.", no_args_is_help=True)


class FaultName(StrEnum):
    CORRUPT_BYTES = "corrupt-bytes"
    WRONG_PAYLOAD = "wrong-payload"
    REDIS_DOWN = "redis-down"
    REDIS_SLOW = "redis-slow"
    SERIALIZER = "serializer"


def load_demo() -> tuple[ModuleType, ModuleType]:
    """The demo's ``scenario`` and ``report`` modules (``api/demo``, shipped in the package)."""
    from api.demo import report, scenario

    return scenario, report


@app.command("incident")
def incident(
    fault: FaultName = typer.Option(
        FaultName.WRONG_PAYLOAD, "--fault", help="What goes wrong in the new Redis layer."
    ),
    tenants: int = typer.Option(20, "--tenants", min=2, max=500, help="Tenants calling."),
    rps: float = typer.Option(200.0, "--rps", min=10.0, max=1000.0, help="Requests per second."),
    json_out: bool = typer.Option(False, "--json", help="Print only the summary as JSON."),
    plot: Path | None = typer.Option(
        None, "--plot", help="Write requests/s and 401/s over time, events marked, to this PNG."
    ),
    duration: float = typer.Option(
        35.0, "--duration", min=12.0, max=110.0, help="Planned length of the run in seconds."
    ),
    plan: bool = typer.Option(
        False, "--plan", help="Roll out in production with a rollout plan (POST .../plans)."
    ),
) -> None:
    """Replay the incident: roll out a second cache layer, break it, watch the guard kill it."""
    from flags.settings import Settings

    if plot is not None and plot.suffix.lower() != ".png":
        raise CliError(f"--plot must name a .png file, got {str(plot)!r}", exit_code=2)
    scenario, report = load_demo()
    from api.demo.faults import Fault

    config = scenario.ScenarioConfig(
        fault=Fault(fault.value),
        tenants=tenants,
        rps=rps,
        duration=duration,
        use_plan=plan,
        redis_url=Settings().redis_url,
    )
    started = time.monotonic()

    def progress(message: str) -> None:
        typer.echo(f"[{time.monotonic() - started:6.2f}s] {message}", err=True)

    import httpx

    try:
        result = scenario.run_incident(config, progress=progress)
    except (RuntimeError, httpx.HTTPError) as exc:
        raise CliError(f"the demo could not run: {exc}") from exc
    if plot is not None:
        report.plot(result.summary, result.series, plot, fine=result.fine_series)
        progress(f"plot written to {plot}")
    if json_out:
        sys.stdout.write(report.summary_json(result.summary) + "\n")
    else:
        sys.stdout.write(report.format_report(result.summary) + "\n")
    sys.stdout.flush()
    missed = [t for t in report.evaluate_targets(result.summary) if not t.met]
    if missed:
        raise typer.Exit(1)
