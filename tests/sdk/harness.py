"""SDK test harness: a real flagrail server (uvicorn on a free port) on a database of the
test's own, and real SDK processes (``tests/sdk/worker.py``) that report what they see.

Every wait is a bounded poll of a condition; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import uvicorn

from api.app import create_app
from api.routes.sdk import SdkServerSettings
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from flags.testing import wait_for
from flags.testing.redis_server import free_port

WORKER = Path(__file__).with_name("worker.py")
ENV = "production"


class LiveServer:
    """``create_app`` served by uvicorn in a thread of this process, over real TCP."""

    def __init__(
        self,
        database_url: str,
        *,
        redis_url: str | None = None,
        sdk_settings: SdkServerSettings | None = None,
        heartbeat: float = 0.5,
    ) -> None:
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = Settings(
            database_url=database_url,
            redis_url=redis_url,
            heartbeat_interval=heartbeat,
            scheduler=False,
        )
        self.store = SqlFlagStore(database_url)
        # install() reads SdkServerSettings from FLAGRAIL_* as a real server does.
        env = {}
        if sdk_settings is not None:
            env = {
                f"FLAGRAIL_{name.upper()}": str(value)
                for name, value in sdk_settings.model_dump().items()
            }
        with mock.patch.dict(os.environ, env):
            self.app = create_app(settings, store=self.store)
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=1,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        wait_for(self._healthy, 15, "the server's /healthz")
        return self

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.thread.is_alive():
            self.app.state.sdk.broadcaster.shutdown_streams()
            self.server.should_exit = True
            self.thread.join(timeout=15)

    @property
    def sdk(self) -> Any:
        return self.app.state.sdk


class Deployment:
    """A database with an environment and a few flags, tokens, and server replicas."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.store = SqlFlagStore(database_url)
        envs = {e.name for e in self.store.list_environments()}
        if ENV not in envs:
            self.store.create_environment(ENV, actor="test")
        _info, self.admin = self.store.create_token("admin", "admin", None, actor="test")
        _info, self.client_token = self.store.create_token("sdk", "client", [ENV], actor="test")
        self.servers: list[LiveServer] = []

    def server(self, **kwargs: Any) -> LiveServer:
        server = LiveServer(self.database_url, **kwargs).start()
        self.servers.append(server)
        return server

    def admin_request(
        self, server: LiveServer, method: str, path: str, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin}"}
        return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30, **kwargs)

    def create_flag(self, key: str, **state: Any) -> None:
        self.store.create_flag(key, actor="test")
        from flags.model import StateChange

        change = StateChange(
            enabled=state.get("enabled", True),
            rollout=state.get("rollout", 100),
            tenants_on=frozenset(state.get("tenants_on", ())),
        )
        self.store.update_state(key, ENV, change, actor="test")

    def close(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.store.close()


class Worker:
    """One SDK process: ``worker.py`` printing a JSON line per applied update."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue

    def drain(self) -> list[dict[str, Any]]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def latest(self) -> dict[str, Any] | None:
        seen = self.drain()
        return seen[-1] if seen else None

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> Any:
        def check() -> dict[str, Any] | None:
            return next((s for s in reversed(self.drain()) if predicate(s)), None)

        return wait_for(check, timeout, f"worker {self.proc.pid} to see it")

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""


class StreamReader:
    """Reads ``/sdk/v1/stream`` on a thread, collecting parsed events (heartbeats too)."""

    def __init__(self, url: str, token: str, env: str = ENV, **headers: str) -> None:
        from flags.sync.sse import SseEvent

        self.events: list[SseEvent] = []
        self.status: int | None = None
        self.body: bytes = b""
        self._client = httpx.Client(timeout=httpx.Timeout(5.0, read=30.0))
        self._args = (url, token, env, headers)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from flags.sync.sse import parse_events

        url, token, env, headers = self._args
        try:
            with self._client.stream(
                "GET",
                f"{url}/sdk/v1/stream",
                params={"environment": env},
                headers={"Authorization": f"Bearer {token}", **headers},
            ) as response:
                if response.status_code != 200:
                    self.body = response.read()  # before status: waiters read both
                self.status = response.status_code
                if response.status_code != 200:
                    return
                for event in parse_events(response.iter_lines()):
                    self.events.append(event)
                    if self._stop.is_set():  # the server's heartbeats bring us here
                        return
        except (httpx.HTTPError, RuntimeError):
            return

    def of(self, kind: str) -> list[Any]:
        return [e for e in list(self.events) if e.event == kind]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._client.close()
