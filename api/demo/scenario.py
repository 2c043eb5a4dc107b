"""The incident, replayed: orchestration of one run on this machine.

``run_incident(config)`` starts everything the run needs and stops it again:

1. a flagrail admin API (``flagrail serve``) on a SQLite database of its own, with
   the flags ``auth.cache.l1`` (on) and ``auth.cache.l2`` (the new Redis layer,
   off) and three tokens: admin (the person rolling out), client (the SDKs),
   operator (the guards);
2. Redis: ``FLAGRAIL_REDIS_URL`` if given (never stopped, paused or flushed:
   the server-side faults are then simulated in the cache's connections), else
   a throwaway ``redis-server`` of the run's own;
3. the exam platform in ``processes`` processes (``api.demo.app``),
   each with its own FlagClient, LayeredCache ``auth.cache`` and Guard;
4. the load generator: ``tenants`` tenants with valid keys, a share of
   never-issued keys, ``rps`` requests per second over the processes.

Then, at fixed fractions of ``duration``: the L2 layer rolled out through the
admin API in stages (staging; production for one tenant; 50% of tenants;
everyone), the fault injected during the rollout (just before the 50% stage goes live),
and a key revoked every ``revoke_every`` seconds with every process probed
until it rejects it. The run goes on until the layer is off in every process
and ``tail`` seconds past (at most ``max_wait`` seconds after the fault).

The result is the summary of the issue (``requests_total``,
``false_rejections``, ``false_acceptances``, ``revocation_p99_ms``,
``time_to_mitigation_s``, ``redeploys``, ``kill_history``) plus ``fault``,
``latency``, ``counts``, ``settings`` and the ``timeline``, and a per-bin
series for the plot.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from api.demo.app import L1_FLAG, L2_FLAG, ServiceConfig
from api.demo.faults import Fault, RedisStall
from api.demo.keys import SCOPES, KeyStore, new_key_secret
from api.demo.loadgen import (
    DemoKey,
    LoadGenerator,
    Sample,
    Verdict,
    judge,
    percentile,
)
from flags.admin_client import AdminClient
from flags.errors import ServerUnavailableError
from flags.testing.redis_server import RedisServer, free_port

__all__ = ["IncidentResult", "ScenarioConfig", "run_incident", "summarize"]

log = logging.getLogger("exam_platform.scenario")

REPO_ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = "production"
_SERVICE_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(ServiceConfig)}
BIN_SECONDS = 0.5
FINE_BIN_SECONDS = 0.1

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    """One run. ``duration`` is the planned length in seconds: the stages and the fault
    sit at fixed fractions of it; the run may go on past it until mitigated + ``tail``.
    """

    fault: Fault = Fault.WRONG_PAYLOAD
    tenants: int = 20
    rps: float = 200.0
    duration: float = 35.0
    processes: int = 2
    keys_per_tenant: int = 5
    invalid_keys: int = 40
    revoke_every: float = 2.0
    tail: float = 4.0
    max_wait: float = 60.0
    use_plan: bool = False
    # External Redis (never stopped or paused); None: a throwaway redis-server.
    redis_url: str | None = None
    # A throwaway server owned by the caller (tests pass their fixture's); the run
    # may stop or stall it.
    redis_server: RedisServer | None = None
    workdir: Path | None = None
    # The admin API's database: None for a SQLite file in the work directory; else a
    # migrated, empty database of the caller's (PostgreSQL in a test).
    admin_database_url: str | None = None
    seed: int = 7
    # Cache and guard settings of the demo (the README's "The incident, replayed" says
    # why); the defaults are the service's own.
    verify_share: float = _SERVICE_DEFAULTS["verify_share"]
    l1_ttl: float = _SERVICE_DEFAULTS["l1_ttl"]
    l2_ttl: float = _SERVICE_DEFAULTS["l2_ttl"]
    guard_window: float = _SERVICE_DEFAULTS["guard_window"]
    guard_min_samples: int = _SERVICE_DEFAULTS["guard_min_samples"]
    guard_max_mismatch_rate: float = _SERVICE_DEFAULTS["guard_max_mismatch_rate"]
    guard_max_corrupt_rate: float = _SERVICE_DEFAULTS["guard_max_corrupt_rate"]
    guard_max_error_rate: float = _SERVICE_DEFAULTS["guard_max_error_rate"]
    redis_timeout: float = _SERVICE_DEFAULTS["redis_timeout"]

    def stage_times(self) -> dict[str, float]:
        """Seconds after the start of the load at which each step runs. The fault comes
        just before the 50% stage goes live: that stage is what exposes it (as the
        incident's rolling update exposed its broken writer to production traffic)."""
        d = self.duration
        return {
            "staging": 0.10 * d,
            "one_tenant": 0.20 * d,
            "fault": 0.40 * d,
            "half": 0.40 * d + 0.25,
            "everyone": 0.65 * d,
        }


@dataclass
class IncidentResult:
    """What ``run_incident`` returns: the summary (JSON-ready) and the plot's series."""

    summary: dict[str, Any]
    series: list[dict[str, float]]
    workdir: Path | None = None
    # The same per 0.1 s, for the plot's close-up of the fault.
    fine_series: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Revocation:
    key: DemoKey
    process: int
    committed_at: float
    latencies_ms: list[float | None]
    late_acceptances: int

    @property
    def every_process_ms(self) -> float | None:
        if any(v is None for v in self.latencies_ms):
            return None
        return max(v for v in self.latencies_ms if v is not None)


@dataclass
class _Run:
    """Mutable state of one run (owned by the orchestrating thread, except where noted)."""

    config: ScenarioConfig
    t0: float = 0.0
    timeline: list[dict[str, Any]] = field(default_factory=list)
    revocations: list[_Revocation] = field(default_factory=list)  # revoker thread appends
    fault_at: float | None = None
    pids_at_start: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # --plan: the rollout plan's id, the last stage index seen, and whether it ended.
    plan_id: int | None = None
    plan_stage: int | None = None
    plan_ended: bool = False

    def event(self, at: float, kind: str, detail: str, label: str | None = None) -> None:
        entry = {
            "t": round(at - self.t0, 3),
            "at": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
            "event": kind,
            "detail": detail,
        }
        if label:
            entry["label"] = label
        with self.lock:
            self.timeline.append(entry)


class _Proc:
    """A child process with its output in a log file; ``stop`` ends it (TERM, then KILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=str(REPO_ROOT),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()

    def tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    env.update(extra)
    return env


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, procs: Sequence[_Proc] = ()
) -> None:
    """Poll ``predicate`` until true; raise ``RuntimeError`` naming ``what`` on timeout
    or when one of ``procs`` died (with the end of its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    logs = "\n".join(f"--- {p.name}\n{p.tail()}" for p in procs)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def _make_keys(config: ScenarioConfig, store: KeyStore) -> list[DemoKey]:
    rnd = random.Random(config.seed)
    keys: list[DemoKey] = []
    rows = []
    for t in range(1, config.tenants + 1):
        tenant = f"tenant-{t:02d}"
        for n in range(config.keys_per_tenant):
            secret = new_key_secret()
            key_id = f"{tenant}.k{n:02d}"
            rows.append((key_id, tenant, secret, SCOPES))
            keys.append(DemoKey(len(keys), tenant, secret, key_id))
    store.add_keys(rows)
    for _ in range(config.invalid_keys):
        tenant = f"tenant-{rnd.randint(1, config.tenants):02d}"
        keys.append(DemoKey(len(keys), tenant, new_key_secret(), None))
    return keys


def guard_role() -> str:
    """The role of the guards' token: ``guard`` (may kill, and alone may name its own
    actor, ``guard:<host>:<pid>``) where the admin API has that role, else ``operator``
    (an admin API from before the role)."""
    from flags.model import Role

    return "guard" if "guard" in {role.value for role in Role} else "operator"


def _setup_admin_db(url: str) -> dict[str, str]:
    """Schema, flags and tokens of the admin API; returns the token secrets by role."""
    from flags.store.schema import upgrade
    from flags.store.sql import SqlFlagStore

    upgrade(url)
    store = SqlFlagStore(url)
    try:
        _info, admin = store.create_token("demo-rollout", "admin", None, actor="demo")
        _info, client = store.create_token(
            "exam-platform-sdk", "client", [ENVIRONMENT], actor="demo"
        )
        _info, guard = store.create_token(
            "exam-platform-guard", guard_role(), [ENVIRONMENT], actor="demo"
        )
        store.create_flag(
            L1_FLAG,
            description="In-process API-key cache of the exam platform",
            kind="operational",
            owner="platform",
            actor="demo",
        )
        store.create_flag(
            L2_FLAG,
            description="Redis API-key cache of the exam platform (the new second layer)",
            kind="operational",
            owner="platform",
            actor="demo",
        )
        from flags.model import StateChange

        for env in ("staging", ENVIRONMENT):
            store.update_state(L1_FLAG, env, StateChange(enabled=True, rollout=100), actor="demo")
    finally:
        store.close()
    return {"admin": admin, "client": client, "guard": guard}


class _Services:
    """Every process of a run, started and stopped together."""

    def __init__(self) -> None:
        self.procs: list[_Proc] = []
        self.redis: RedisServer | None = None
        self.owns_redis = False
        self.stall: RedisStall | None = None
        self.redis_url: str | None = None
        self.redis_prefix: str | None = None

    def close(self) -> None:
        if self.stall is not None:
            self.stall.stop()
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()
        if self.redis is not None and self.owns_redis:
            self.redis.close()
        elif self.redis is None and self.redis_url and self.redis_prefix:
            _delete_own_keys(self.redis_url, self.redis_prefix)


def _delete_own_keys(url: str, prefix: str) -> None:
    """Delete the keys under the run's own ``prefix`` on an external Redis (SCAN + DEL;
    never a flush). Best-effort: an unreachable Redis is logged, not raised."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2.0)
    try:
        batch = []
        for key in client.scan_iter(match=prefix + "*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    except redis.RedisError as exc:
        log.warning("could not delete the demo's keys under %s: %r", prefix, exc)
    finally:
        client.close()


def _admin(url: str, token: str) -> AdminClient:
    return AdminClient(url, token, timeout=5.0)


def run_incident(config: ScenarioConfig, progress: Progress | None = None) -> IncidentResult:
    """Run the scenario once and return its summary. Blocks for about ``config.duration``
    seconds (plus start-up). Raises ``RuntimeError`` when a process fails to start.

    Everything it starts is stopped before it returns, also on errors; a throwaway
    work directory is removed unless ``config.workdir`` was given.
    """
    say = progress or (lambda _msg: None)
    if config.processes < 2:
        raise ValueError("processes must be at least 2: 'every process' must mean something")
    own_dir = config.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="flagrail-demo-")) if own_dir else config.workdir
    assert workdir is not None
    workdir.mkdir(parents=True, exist_ok=True)
    services = _Services()
    try:
        return _run(config, workdir, services, say)
    finally:
        services.close()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(
    config: ScenarioConfig, workdir: Path, services: _Services, say: Progress
) -> IncidentResult:
    admin_url_db = config.admin_database_url or f"sqlite:///{workdir / 'flagrail.db'}"
    keys_url = f"sqlite:///{workdir / 'keys.db'}"
    say("setting up the admin database, flags and tokens")
    tokens = _setup_admin_db(admin_url_db)
    keystore = KeyStore(keys_url)
    keystore.create_schema()
    keys = _make_keys(config, keystore)
    keystore.close()

    simulate = False
    if config.redis_url:
        redis_url, simulate = config.redis_url, True
        where = urlsplit(redis_url)
        say(
            f"using Redis at {where.hostname}:{where.port or 6379} "
            "(faults on it are simulated in the cache's connections)"
        )
    else:
        if config.redis_server is not None:
            services.redis = config.redis_server
        else:
            services.redis = RedisServer().start()
            services.owns_redis = True
        redis_url = services.redis.url
        say(f"started a throwaway redis-server on port {services.redis.port}")

    # Every key and channel of the run lives under this prefix; with an external Redis
    # the run deletes its own keys at the end (never anything else).
    redis_prefix = f"flagrail-demo-{secrets.token_hex(4)}:"
    services.redis_url, services.redis_prefix = redis_url, redis_prefix
    admin_port = free_port()
    admin_url = f"http://127.0.0.1:{admin_port}"
    admin_proc = _Proc(
        "admin-api",
        [
            sys.executable,
            "-c",
            "import sys; from api.cli import main; main(sys.argv[1:])",
            "serve",
            "--database-url",
            admin_url_db,
            "--port",
            str(admin_port),
            "--log-level",
            "warning",
        ],
        _child_env(
            {
                "FLAGRAIL_REDIS_URL": redis_url,
                "FLAGRAIL_REDIS_PREFIX": redis_prefix,
                "FLAGRAIL_HOST": "127.0.0.1",
            }
        ),
        workdir,
    )
    services.procs.append(admin_proc)

    cache_secret = secrets.token_hex(32)
    demo_secret = secrets.token_urlsafe(24)
    targets: list[str] = []
    for i in range(config.processes):
        port = free_port()
        service = ServiceConfig(
            name=f"exam-{i}",
            port=port,
            keys_url=keys_url,
            redis_url=redis_url,
            flagrail_url=admin_url,
            client_token=tokens["client"],
            guard_token=tokens["guard"],
            demo_secret=demo_secret,
            cache_secret=cache_secret,
            redis_prefix=redis_prefix,
            environment=ENVIRONMENT,
            simulate_outage=simulate,
            verify_share=config.verify_share,
            l1_ttl=config.l1_ttl,
            l2_ttl=config.l2_ttl,
            guard_window=config.guard_window,
            guard_min_samples=config.guard_min_samples,
            guard_max_mismatch_rate=config.guard_max_mismatch_rate,
            guard_max_corrupt_rate=config.guard_max_corrupt_rate,
            guard_max_error_rate=config.guard_max_error_rate,
            redis_timeout=config.redis_timeout,
        )
        proc = _Proc(
            service.name,
            [sys.executable, "-m", "api.demo.app"],
            _child_env(service.to_env()),
            workdir,
        )
        services.procs.append(proc)
        targets.append(f"http://127.0.0.1:{port}")

    say("waiting for the admin API and the service processes")
    with httpx.Client(timeout=1.0) as probe:
        _wait_for(
            lambda: probe.get(admin_url + "/healthz").status_code == 200,
            30,
            "the admin API",
            [admin_proc],
        )
        for target, proc in zip(targets, services.procs[1:], strict=True):
            _wait_for(
                lambda target=target: probe.get(target + "/healthz").json().get("ready") is True,
                30,
                f"{proc.name} to be ready",
                [proc],
            )

    demo_headers = {"Authorization": f"Bearer {demo_secret}"}
    run = _Run(config)
    with httpx.Client(timeout=2.0, headers=demo_headers) as demo:
        run.pids_at_start = [demo.get(t + "/_demo/state").json()["pid"] for t in targets]
        loadgen = LoadGenerator(targets, keys, rps=config.rps, seed=config.seed)
        revoker = _Revoker(run, targets, keys, demo, loadgen, config)
        # Keep what exists now out of the cyclic collector while measuring: a full
        # pass over it would stall the load generator's loop (and its clock) for tens
        # of milliseconds. Undone below.
        gc.collect()
        gc.freeze()
        run.t0 = time.time()
        loadgen.start()
        loadgen.wait_running()
        run.event(
            run.t0,
            "start",
            f"{config.processes} service processes (pids {run.pids_at_start}), "
            f"{config.tenants} tenants, {config.rps:g} req/s, fault {config.fault.value}, "
            f"Redis {'external' if simulate else 'throwaway'}",
        )
        say(f"load running: {config.rps:g} req/s over {config.processes} processes")
        revoker.start()
        try:
            _drive(run, config, services, targets, admin_url, tokens["admin"], demo, say)
        finally:
            revoker.stop()
            loadgen.stop()
            gc.unfreeze()
        end_at = time.time()
        run.event(end_at, "end", f"{len(loadgen.samples)} requests answered")
        final_states = [demo.get(t + "/_demo/state").json() for t in targets]
    with _admin(admin_url, tokens["admin"]) as admin:
        history = admin.history(flag=L2_FLAG, action="kill", environment=ENVIRONMENT)
        kill_rows = list(reversed(history["items"]))
    summary, (series, fine_series) = summarize(
        config, run, loadgen.samples, keys, final_states, kill_rows, shed=loadgen.shed
    )
    if config.workdir is not None:
        _write_samples(workdir / "samples.csv", run, loadgen.samples)
    return IncidentResult(summary, series, None if config.workdir is None else workdir, fine_series)


def _write_samples(path: Path, run: _Run, samples: Sequence[Sample]) -> None:
    """Every answer of the run, for a closer look (only when a work directory was given)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write("t,latency_ms,status,key,process,source\n")
        for s in samples:
            out.write(
                f"{s.sent - run.t0:.4f},{s.latency * 1000:.2f},{s.status},{s.key},"
                f"{s.target},{s.source}\n"
            )


class _Revoker:
    """Revokes one key every ``revoke_every`` seconds and probes every process."""

    def __init__(
        self,
        run: _Run,
        targets: list[str],
        keys: list[DemoKey],
        demo: httpx.Client,
        loadgen: LoadGenerator,
        config: ScenarioConfig,
    ) -> None:
        self.run = run
        self.targets = targets
        self.candidates = [k for k in keys if k.key_id is not None]
        random.Random(config.seed + 1).shuffle(self.candidates)
        self.demo = demo
        self.loadgen = loadgen
        self.every = config.revoke_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="revoker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.every) and self.candidates:
            key = self.candidates.pop()
            process = n % len(self.targets)
            n += 1
            url = f"{self.targets[process]}/_demo/keys/{key.key_id}/revoke"

            def revoke(url: str = url) -> float:
                response = self.demo.post(url)
                response.raise_for_status()
                return float(response.json()["committed_at"])

            try:
                committed_at, latencies, late = self.loadgen.measure_revocation(key, revoke)
            except (httpx.HTTPError, RuntimeError) as exc:
                log.warning("revoking %s failed: %r", key.key_id, exc)
                continue
            rev = _Revocation(key, process, committed_at, latencies, late)
            with self.run.lock:
                self.run.revocations.append(rev)
            worst = rev.every_process_ms
            self.run.event(
                committed_at,
                "revocation",
                f"key {key.key_id} revoked through process {process}; every process rejects "
                + (f"it after {worst:.1f} ms" if worst is not None else "it: NOT within 3 s"),
            )


def _drive(
    run: _Run,
    config: ScenarioConfig,
    services: _Services,
    targets: list[str],
    admin_url: str,
    admin_token: str,
    demo: httpx.Client,
    say: Progress,
) -> None:
    """Roll out, inject the fault, and wait until the layer is off in every process (and
    ``tail`` seconds more), or the planned end, or ``max_wait`` after the fault."""
    times = config.stage_times()
    steps: list[tuple[float, str]] = sorted((t, name) for name, t in times.items())
    planned_end = run.t0 + config.duration
    mitigated_at: float | None = None
    with _admin(admin_url, admin_token) as admin:
        plan_started = False
        while True:
            now = time.time()
            while steps and now >= run.t0 + steps[0][0]:
                _t, name = steps.pop(0)
                if name == "fault":
                    _inject(run, config, services, targets, demo, say)
                elif config.use_plan and name in ("one_tenant", "half", "everyone"):
                    if not plan_started:
                        _start_plan(run, config, admin, say)
                        plan_started = True
                else:
                    _stage(run, name, admin, say)
            if plan_started:
                _follow_plan(run, admin, say)
            states = [demo.get(t + "/_demo/state").json() for t in targets]
            if run.fault_at is not None and mitigated_at is None:
                offs = [s.get("layer_off_at") for s in states]
                if all(o is not None for o in offs):
                    mitigated_at = max(float(o) for o in offs if o is not None)
                    say(
                        f"layer off in every process "
                        f"{mitigated_at - run.fault_at:.2f}s after the fault"
                    )
            if mitigated_at is not None:
                end = max(planned_end, mitigated_at + config.tail)
            elif run.fault_at is not None:
                end = max(planned_end, run.fault_at + config.max_wait)
            else:
                end = planned_end
            if now >= end and not steps:
                break
            time.sleep(0.1)


_STAGES = {
    "staging": (
        "staging",
        {"enabled": True, "rollout": 100},
        "staging: auth.cache.l2 on for everyone",
        "staging",
    ),
    "one_tenant": (
        ENVIRONMENT,
        {"enabled": True, "rollout": 0, "tenants_on": ["tenant-01"]},
        "production: auth.cache.l2 on for one tenant (tenant-01)",
        "1 tenant",
    ),
    "half": (
        ENVIRONMENT,
        {"rollout": 50},
        "production: auth.cache.l2 on for 50% of tenants",
        "50%",
    ),
    "everyone": (
        ENVIRONMENT,
        {"rollout": 100},
        "production: auth.cache.l2 on for everyone",
        "100%",
    ),
}


def _stage(run: _Run, name: str, admin: AdminClient, say: Progress) -> None:
    env, body, detail, label = _STAGES[name]
    if env == ENVIRONMENT:
        current = admin.get_flag(L2_FLAG)["environments"][ENVIRONMENT]
        if current.get("killed"):
            at = time.time()
            run.event(
                at,
                "rollout_halted",
                f"stage '{label}' not applied: {L2_FLAG} is killed (by {current.get('killed_by')})",
                label="rollout halted",
            )
            say(f"rollout halted before stage '{label}': the flag is killed")
            return
    admin.set_state(env, L2_FLAG, reason=f"rollout stage: {label}", **body)
    run.event(time.time(), "stage", detail, label=f"stage: {label}")
    say(detail)


def _start_plan(run: _Run, config: ScenarioConfig, admin: AdminClient, say: Progress) -> None:
    """``--plan``: the production stages as one rollout plan (issue #9's API); the
    plan's scheduler advances it, and a kill rolls it back."""
    times = config.stage_times()
    body = {
        "environment": ENVIRONMENT,
        "stages": [
            {
                "enabled": True,
                "tenants_on": ["tenant-01"],
                "rollout": 0,
                "hold": f"{times['half'] - times['one_tenant']:.1f}s",
            },
            {"rollout": 50, "hold": f"{times['everyone'] - times['half']:.1f}s"},
            {"rollout": 100, "hold": "1s"},
        ],
    }
    plan = admin.create_plan(L2_FLAG, body)
    run.plan_id = int(plan["id"])
    run.plan_stage = plan.get("stage")
    detail = f"production: rollout plan {run.plan_id} created: 1 tenant, 50%, 100%"
    run.event(time.time(), "stage", detail, label="plan: 1 tenant")
    say(detail)


def _follow_plan(run: _Run, admin: AdminClient, say: Progress) -> None:
    """Put the plan's own steps (advance, roll back) on the timeline."""
    if run.plan_id is None or run.plan_ended:
        return
    try:
        plan = admin.get_plan(run.plan_id)
    except ServerUnavailableError:  # the next poll tries again
        return
    stage = plan.get("stage")
    if isinstance(stage, int) and stage != run.plan_stage:
        run.plan_stage = stage
        label = {0: "1 tenant", 1: "50%", 2: "100%"}.get(stage, str(stage))
        detail = f"production: plan {run.plan_id} advanced to stage {stage + 1} ({label})"
        run.event(time.time(), "stage", detail, label=f"plan: {label}")
        say(detail)
    status = plan.get("status")
    if status in ("rolled_back", "aborted", "completed"):
        run.plan_ended = True
        kind = "stage" if status == "completed" else "rollout_halted"
        detail = f"plan {run.plan_id} {status}: {plan.get('reason') or ''}".rstrip(": ")
        run.event(time.time(), kind, detail, label=f"plan {status}")
        say(detail)


def _inject(
    run: _Run,
    config: ScenarioConfig,
    services: _Services,
    targets: list[str],
    demo: httpx.Client,
    say: Progress,
) -> None:
    fault = config.fault
    at = time.time()
    simulated = services.redis is None
    if fault in (Fault.CORRUPT_BYTES, Fault.WRONG_PAYLOAD, Fault.SERIALIZER) or simulated:
        for target in targets:
            demo.post(target + "/_demo/fault", json={"fault": fault.value}).raise_for_status()
        how = {
            Fault.CORRUPT_BYTES: "the L2 write path now stores damaged bytes",
            Fault.WRONG_PAYLOAD: "the L2 write path now stores well-formed records with "
            "the wrong content (another key's tenant, or no scopes)",
            Fault.SERIALIZER: "the L2 layer's serializer now writes every record with its "
            "scopes emptied (well formed: the envelope's checksum holds)",
            Fault.REDIS_DOWN: "Redis refuses the cache's connections (simulated)",
            Fault.REDIS_SLOW: "Redis answers the cache late (simulated)",
        }[fault]
    elif fault is Fault.REDIS_DOWN:
        assert services.redis is not None
        services.redis.stop()
        how = "redis-server killed"
    else:
        assert services.redis is not None
        services.stall = RedisStall(services.redis)
        services.stall.start()
        how = "redis-server stalls in DEBUG SLEEP 0.25 s out of every 0.27 s"
    run.fault_at = at
    run.event(at, "fault", f"{fault.value}: {how}", label=f"fault: {fault.value}")
    say(f"fault injected: {fault.value}")


def summarize(
    config: ScenarioConfig,
    run: _Run,
    samples: Sequence[Sample],
    keys: Sequence[DemoKey],
    final_states: Sequence[dict[str, Any]],
    kill_rows: Sequence[dict[str, Any]],
    *,
    shed: int = 0,
) -> tuple[dict[str, Any], tuple[list[dict[str, float]], list[dict[str, float]]]]:
    """Judge every answer; derive the timeline's measured events, the summary, and the
    plot's series per 0.5 s and per 0.1 s."""
    revoked_at = {r.key.index: r.committed_at for r in run.revocations}
    by_index = {k.index: k for k in keys}
    verdicts = [judge(s, by_index[s.key], revoked_at) for s in samples]
    false_rej = [s for s, v in zip(samples, verdicts, strict=True) if v is Verdict.FALSE_REJECTION]
    false_acc = [s for s, v in zip(samples, verdicts, strict=True) if v is Verdict.FALSE_ACCEPTANCE]
    errors = sum(1 for v in verdicts if v is Verdict.ERROR)
    late_probe_acceptances = sum(r.late_acceptances for r in run.revocations)

    # The layer's first wrong answer (a corrupt, mismatched or failed L2 read in a
    # process) and the first wrong answer a client got.
    fault_at = run.fault_at
    first_bad: tuple[float, str] | None = None
    for i, state in enumerate(final_states):
        for at, what in state.get("bad_reads") or []:
            if fault_at is not None and at >= fault_at and (first_bad is None or at < first_bad[0]):
                first_bad = (float(at), f"process {i}: {what}")
    wrong = sorted(false_rej + false_acc, key=lambda s: s.answered)
    first_client_wrong = wrong[0] if wrong else None
    if first_bad is not None:
        run.event(first_bad[0], "first_bad_read", f"the layer's first wrong answer: {first_bad[1]}")
    if first_client_wrong is not None:
        s = first_client_wrong
        key = by_index[s.key]
        kind = f"valid key answered {s.status}" if s in false_rej else "invalid key let in"
        run.event(
            s.answered,
            "first_wrong_answer",
            f"{kind} (tenant {key.tenant}, process {s.target}, auth from {s.source or '?'})",
            label="first wrong answer",
        )
    else:
        run.event(
            first_bad[0] if first_bad else (fault_at or run.t0),
            "first_wrong_answer",
            "none reached a client",
            label="no wrong answer reached a client",
        )
    starts = [x for x in (first_bad[0] if first_bad else None,) if x is not None]
    if first_client_wrong is not None:
        starts.append(first_client_wrong.answered)
    wrong_from = min(starts) if starts else fault_at

    for i, state in enumerate(final_states):
        trip = state.get("guard_tripped_at")
        if trip is not None:
            run.event(
                float(trip),
                "guard_trip",
                f"process {i} (pid {state.get('pid')}): its guard stopped using "
                f"{L2_FLAG} in this process and asked the admin API for the kill",
                label=f"guard trips (p{i})",
            )
    for row in kill_rows:
        at = datetime.fromisoformat(row["at"]).timestamp()
        run.event(
            at,
            "kill",
            f"{row['actor']} killed {row['flag']} in {row['environment']}: {row.get('reason')}",
            label="kill",
        )
    offs = [s.get("layer_off_at") for s in final_states]
    mitigated_at = (
        max(float(o) for o in offs) if offs and all(o is not None for o in offs) else None
    )
    if mitigated_at is not None:
        how = ", ".join(
            f"p{i} {s.get('layer_off_by')} +{float(s['layer_off_at']) - run.t0:.3f}s"
            for i, s in enumerate(final_states)
        )
        run.event(mitigated_at, "mitigated", f"{L2_FLAG} off in every process ({how})")
    ttm = None
    if mitigated_at is not None and fault_at is not None and mitigated_at < fault_at:
        # The layer went off before anything was broken: a false alarm, not a mitigation.
        run.event(mitigated_at, "false_alarm", f"{L2_FLAG} went off before the fault")
    elif mitigated_at is not None and wrong_from is not None:
        ttm = round(max(0.0, mitigated_at - wrong_from), 3)
    if mitigated_at is not None:
        last_wrong = max((s.answered for s in wrong), default=None)
        recovery = max(mitigated_at, last_wrong) if last_wrong is not None else mitigated_at
        run.event(
            recovery,
            "recovery",
            "every answer right from here on"
            + (f" (last wrong answer +{last_wrong - run.t0:.3f}s)" if last_wrong else ""),
            label="recovery",
        )

    per_rev = [r.every_process_ms for r in run.revocations]
    rev_values = [v if v is not None else 3000.0 for v in per_rev]
    rev_p99 = percentile(rev_values, 99)

    latencies = [s.latency * 1000 for s in samples if s.status]
    during = [
        s.latency * 1000
        for s in samples
        if fault_at is not None and s.sent >= fault_at and s.status
    ]
    before = [
        s.latency * 1000 for s in samples if (fault_at is None or s.sent < fault_at) and s.status
    ]
    # The loader's own latency: requests answered from the key database while all
    # was well (after a 1 s warm-up, before the fault).
    loader = [
        s.latency * 1000
        for s in samples
        if s.source == "loader"
        and s.status
        and s.sent >= run.t0 + 1.0
        and (fault_at is None or s.sent < fault_at)
    ]
    failed_requests = [s for s in samples if s.status == 0]
    redeploys = sum(
        1
        for before_pid, state in zip(run.pids_at_start, final_states, strict=True)
        if state.get("pid") != before_pid
    )
    with run.lock:
        timeline = sorted(run.timeline, key=lambda e: e["t"])

    def r(x: float | None, nd: int = 1) -> float | None:
        return None if x is None else round(x, nd)

    summary: dict[str, Any] = {
        "fault": config.fault.value,
        "requests_total": len(samples),
        "false_rejections": len(false_rej),
        "false_acceptances": len(false_acc) + late_probe_acceptances,
        "revocation_p99_ms": r(rev_p99),
        "time_to_mitigation_s": ttm,
        "redeploys": redeploys,
        "kill_history": list(kill_rows),
        "latency": {
            "p50_ms": r(percentile(latencies, 50)),
            "p99_ms": r(percentile(latencies, 99)),
            "p99_ms_before_fault": r(percentile(before, 99)),
            "p99_ms_during_fault": r(percentile(during, 99)),
            "loader_p99_ms": r(percentile(loader, 99)),
        },
        "counts": {
            "errors": errors,
            "no_answer": len(failed_requests),
            "shed": shed,
            "revocations": len(run.revocations),
            "revocation_ms": [r(v) for v in per_rev],
            "sources": _count_sources(samples),
            "rejected": sum(1 for s in samples if s.status in (401, 403)),
        },
        "processes": [
            {
                "pid": s.get("pid"),
                "layer_off_by": s.get("layer_off_by"),
                "flag_source": s.get("flag_source"),
                "guard_kills": s.get("guard_kills"),
                "revocations_followed": s.get("revocations_followed"),
                "l2": {
                    k: v
                    for k, v in (s.get("cache") or {}).get("l2", {}).items()
                    if k not in ("buckets", "latency_count", "latency_sum") and v
                },
            }
            for s in final_states
        ],
        "settings": {
            k: (v.value if isinstance(v, Fault) else v)
            for k, v in asdict(replace(config, redis_server=None, workdir=None)).items()
            if k not in ("redis_server", "workdir", "admin_database_url")
        },
        "timeline": timeline,
    }
    return summary, (
        _series(run, samples, verdicts, BIN_SECONDS),
        _series(run, samples, verdicts, FINE_BIN_SECONDS),
    )


def _count_sources(samples: Sequence[Sample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in samples:
        out[s.source or "none"] = out.get(s.source or "none", 0) + 1
    return dict(sorted(out.items()))


def _series(
    run: _Run, samples: Sequence[Sample], verdicts: Sequence[Verdict], width: float
) -> list[dict[str, float]]:
    """Per bin of ``width`` seconds (by send time): requests, rejected (401/403), false
    rejections, errors, and the p99 latency (ms) of the bin's answers."""
    if not samples:
        return []
    end = max(s.sent for s in samples)
    n = int((end - run.t0) / width) + 1
    rows: list[dict[str, float]] = [
        {"t": round(i * width, 3), "requests": 0, "rejected": 0, "false_rejections": 0, "errors": 0}
        for i in range(n)
    ]
    latencies: list[list[float]] = [[] for _ in range(n)]
    for s, v in zip(samples, verdicts, strict=True):
        i = int((s.sent - run.t0) / width)
        if not 0 <= i < n:
            continue
        row = rows[i]
        row["requests"] += 1
        if s.status in (401, 403):
            row["rejected"] += 1
        if v is Verdict.FALSE_REJECTION:
            row["false_rejections"] += 1
        if v is Verdict.ERROR:
            row["errors"] += 1
        if s.status:
            latencies[i].append(s.latency * 1000)
    for row, values in zip(rows, latencies, strict=True):
        row["p99_ms"] = percentile(values, 99) or 0.0
    return rows[:-1] if len(rows) > 1 else rows
