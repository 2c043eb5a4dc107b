"""A local HTTP webhook receiver for tests: a real threaded HTTP server on a free
port of 127.0.0.1 that records every request, verifies each with the reference
``standardwebhooks`` package when given the secret, and can be told to go down
(the port refuses connections) and come back up on the same port.

``status`` is what it answers (200 unless a test sets another); ``delay`` makes it
slow to answer. Thread-safe; ``close()`` stops it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True, slots=True)
class Received:
    """One request as it arrived."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    verified: bool | None = None
    payload: Any = field(default=None)

    @property
    def msg_id(self) -> str:
        return self.headers.get("webhook-id", "")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Receiver:
    """Records webhook deliveries. ``secrets`` maps a path (``/hook``) to the
    signing secret its deliveries are verified with."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.delay = 0.0
        self.secrets: dict[str, str] = {}
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # ------------------------------------------------------------ up / down
    def up(self) -> None:
        """Listen (again) on ``port``. Idempotent."""
        if self._server is not None:
            return
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle's algorithm
            # and the client's delayed ACK add ~40 ms to every answer.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                if receiver._server is None:  # down: a kept-alive connection is cut too
                    self.close_connection = True
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                receiver._record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                if receiver.delay:
                    time.sleep(receiver.delay)
                answer = b'{"ok":true}'
                self.send_response(receiver.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def down(self) -> None:
        """Stop listening: new connections are refused until ``up()``, and a request
        on a connection kept alive from before is cut off unanswered."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    close = down

    def __enter__(self) -> Receiver:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------ records
    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        secret = self.secrets.get(path)
        verified: bool | None = None
        payload: Any = None
        if secret is not None:
            try:
                payload = Webhook(secret).verify(body, headers)
                verified = True
            except Exception:  # any verification failure is recorded, not raised
                verified = False
        else:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        with self._lock:
            self._received.append(Received(path, headers, body, time.time(), verified, payload))

    def received(self, path: str | None = None) -> list[Received]:
        """What arrived (at ``path``, or anywhere), in arrival order."""
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def unique(self, path: str | None = None) -> list[Received]:
        """``received`` without repeats of a ``webhook-id`` (the first of each kept)."""
        seen: set[str] = set()
        out = []
        for r in self.received(path):
            if r.msg_id not in seen:
                seen.add(r.msg_id)
                out.append(r)
        return out
