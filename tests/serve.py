"""``flagrail serve`` in a subprocess, for the tests that need a real server process
(its own memory, a SIGKILL that leaves no cleanup, replicas on one database).

``ServeProcess(database_url, log)`` starts one at once on a free port of 127.0.0.1
and returns without waiting; ``wait_healthy()`` (or ``with``) waits for ``/healthz``.
Its environment is this process's minus every ``FLAGRAIL_*`` variable (a developer's
``FLAGRAIL_REDIS_URL`` or ``FLAGRAIL_WEBHOOK_*`` never leaks into a test), then:

- ``FLAGRAIL_SCHEDULER`` from ``scheduler`` (off unless asked for),
- ``FLAGRAIL_BOOTSTRAP_TOKEN_FILE`` beside the log (``<log>.token``), so a first admin
  token minted on an empty database never lands in the working directory,
- then ``env``, which wins over both.

Standard output and standard error both go to ``log`` (appended); every error about
the process (it exited, it never became healthy) carries the tail of that file.
``stop()`` is SIGTERM, then SIGKILL after a grace period; ``kill()`` is SIGKILL
straight away (crash drills).

Usage::

    with ServeProcess(url, tmp_path / "a.log", env={"FLAGRAIL_WEBHOOK_LEASE": "4"}) as server:
        httpx.get(f"{server.base_url}/healthz")

    servers = [ServeProcess(url, tmp_path / f"{n}.log") for n in ("a", "b")]
    wait_all_healthy(servers)  # started side by side: a start is mostly imports
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from flags.testing.redis_server import free_port

__all__ = ["FLAGRAIL", "ServeProcess", "ServerExited", "wait_all_healthy"]

FLAGRAIL = Path(sys.executable).with_name("flagrail")
# How much of the log an error quotes.
TAIL_LINES = 40


class ServerExited(AssertionError):
    """The server process ended while a test still needed it (the message has its exit
    code and the tail of its output)."""


class ServeProcess:
    """One ``flagrail serve --database-url <database_url> --port <free port>`` process.

    ``args`` are added to the command line (``["--workers", "2"]``); ``log_level`` is
    its ``--log-level``. The process starts in the constructor; nothing waits for it
    until ``wait_healthy()`` or ``__enter__``.
    """

    def __init__(
        self,
        database_url: str,
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        scheduler: bool = False,
        log_level: str = "warning",
    ) -> None:
        self.database_url = database_url
        self.log = log
        self.port = free_port()
        command = [
            str(FLAGRAIL),
            "serve",
            *("--database-url", database_url, "--port", str(self.port)),
            *("--log-level", log_level),
            *args,
        ]
        environment = {k: v for k, v in os.environ.items() if not k.startswith("FLAGRAIL_")}
        environment["FLAGRAIL_SCHEDULER"] = "true" if scheduler else "false"
        environment["FLAGRAIL_BOOTSTRAP_TOKEN_FILE"] = str(log.with_suffix(".token"))
        environment.update(env or {})
        with log.open("ab") as output:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, env=environment
            )

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """None while the process runs, else its exit code (negative: the signal)."""
        return self.proc.poll()

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines of the process's output (stderr and stdout)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"<no log at {self.log}: {exc.strerror}>"
        return "\n".join(text.splitlines()[-lines:])

    def _describe(self, what: str) -> str:
        return (
            f"flagrail serve on port {self.port} {what}; the last lines of {self.log}:\n"
            f"{self.log_tail()}"
        )

    def healthy(self) -> bool:
        """True when ``GET /healthz`` answers 200. Raises ``ServerExited`` if the process
        has ended (a server that died is never "not healthy yet")."""
        if self.proc.poll() is not None:
            raise ServerExited(self._describe(f"exited with {self.proc.returncode}"))
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 60.0, interval: float = 0.05) -> ServeProcess:
        """Return ``self`` once healthy. Raises ``ServerExited`` if the process ends, or
        ``AssertionError`` (with the output's tail) when ``timeout`` seconds pass first;
        the process is left running either way (``stop()`` it)."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise AssertionError(self._describe(f"not healthy after {timeout}s"))
            time.sleep(interval)
        return self

    def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited ``grace`` seconds later; waits for
        the exit and returns the exit code. Safe to call again, or after ``kill()``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL at once and wait for it: no shutdown, leases and open transactions
        are left as they are (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> ServeProcess:
        """Wait until healthy (60 s); on failure the process is stopped, then it raises."""
        try:
            return self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def wait_all_healthy(servers: Sequence[ServeProcess], timeout: float = 60.0) -> None:
    """Wait until every server (started side by side) is healthy, each within
    ``timeout`` seconds of this call. If one fails, every server is SIGKILLed and the
    error is raised."""
    try:
        deadline = time.monotonic() + timeout
        for server in servers:
            server.wait_healthy(max(deadline - time.monotonic(), 0.0))
    except BaseException:
        for server in servers:
            server.kill()
        raise
