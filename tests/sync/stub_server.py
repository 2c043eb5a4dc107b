"""A stub flagrail server for SDK sync tests: answers the snapshot, refuses the stream,
accepts reports, and records every request and every connection it accepted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from flags.model import Snapshot

ENV = "production"


class StubState:
    def __init__(self) -> None:
        self.snapshot = Snapshot(ENV, 1, {})
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.posted: list[tuple[str, bytes]] = []  # (path, body) of every POST
        self.posted_at: list[float] = []  # time.monotonic() when each POST's head came
        self.connections = 0
        self.close_after_answer = False  # answer with "Connection: close"
        self.lock = threading.Lock()

    def count(self, method: str, prefix: str) -> int:
        with self.lock:
            return sum(1 for m, p, _h in self.requests if m == method and p.startswith(prefix))


@contextmanager
def stub_server() -> Iterator[tuple[str, StubState, ThreadingHTTPServer]]:
    state = StubState()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections += 1

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if state.close_after_answer:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append(("GET", self.path, dict(self.headers)))
            if not self.path.startswith("/sdk/v1/snapshot"):
                self._answer(503, b'{"error":{"message":"no streams"}}', {})
                return
            if self.headers.get("Authorization") != "Bearer good":
                self._answer(401, b'{"error":{"message":"bad token"}}', {})
                return
            version = state.snapshot.version
            headers = {"ETag": f'"{version}"', "X-Flagrail-Publishes": "none"}
            if self.headers.get("If-None-Match") == f'"{version}"':
                self._answer(304, b"", headers)
                return
            body = json.dumps(state.snapshot.to_dict()).encode()
            self._answer(200, body, {**headers, "Content-Type": "application/json"})

        def do_POST(self) -> None:
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with state.lock:
                state.requests.append(("POST", self.path, dict(self.headers)))
                state.posted.append((self.path, body))
                state.posted_at.append(arrived)
            self._answer(202, b'{"accepted":true}', {"Content-Type": "application/json"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state, server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
