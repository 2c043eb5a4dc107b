"""``GET /sdk/v1/stream`` answered by ``api.streams.DirectStream`` (the fast path) says
what the route says, delivers every change in order to every stream, and lets go of a
stream whose client left.

Each case is sent twice to one real server (uvicorn over TCP), with the fast path on
and off: the status line, the headers (but the request id) and the first events must
be the same, and the fast path must have answered the cases it exists for.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from api.routes.sdk import SdkServerSettings
from api.streams import DirectStream, _chunk, _resume, socket_writer
from flags.testing import wait_for

from .harness import ENV, Deployment, LiveServer

HEAD_END = b"\r\n\r\n"


class RawStream:
    """One stream over a plain socket: the response head as sent, then the body's
    chunks decoded into SSE events as they arrive."""

    def __init__(self, server: LiveServer, token: str | None, query: str, **headers: str):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        lines = [f"GET /sdk/v1/stream?{query} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while HEAD_END not in self.buffer:
            self._recv()
        head, self.buffer = self.buffer.split(HEAD_END, 1)
        status, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status.split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)
        }
        self.body = b""

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the stream")
        self.buffer += chunk

    def events(self, count: int) -> list[str]:
        """The first ``count`` SSE blocks (comments included), as text."""
        while self._decoded().count(b"\n\n") < count:
            self._recv()
        return self._decoded().decode().split("\n\n")[:count]

    def _decoded(self) -> bytes:
        """The chunked body decoded so far (complete chunks only)."""
        out, rest = b"", self.buffer
        while b"\r\n" in rest:
            size_line, after = rest.split(b"\r\n", 1)
            size = int(size_line, 16)
            if len(after) < size + 2:
                break
            out += after[:size]
            rest = after[size + 2 :]
        return out

    def error_body(self) -> bytes:
        length = int(self.headers["content-length"])
        while len(self.buffer) < length:
            self._recv()
        return self.buffer[:length]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def served(deployment: Deployment) -> Iterator[tuple[Deployment, LiveServer]]:
    deployment.create_flag("checkout")
    server = deployment.server(sdk_settings=SdkServerSettings(max_streams_per_token=3))
    yield deployment, server


def _open(server: LiveServer, *, fast: bool, **kwargs: Any) -> tuple[RawStream, bool]:
    stats = server.app.state.fastpath
    stats.enabled = fast
    before = stats.answered
    try:
        stream = RawStream(server, **kwargs)
    finally:
        stats.enabled = True
    return stream, stats.answered > before


def _kill(deployment: Deployment, server: LiveServer, what: str = "kill") -> None:
    r = deployment.admin_request(
        server, "POST", f"/admin/flags/checkout/{what}", json={"reason": "t", "environments": [ENV]}
    )
    assert r.status_code == 200, r.text


CASES: dict[str, tuple[dict[str, Any], bool]] = {
    # name: (request, answered by the fast path)
    "a stream: 200": ({}, True),
    "last-event-id: replay": ({"last": "current-1"}, True),
    "last-event-id current: nothing to replay": ({"last": "current"}, True),
    "last-event-id too old: snapshot": ({"last": "0"}, True),
    "last-event-id garbage: snapshot": ({"last": "x"}, True),
    "last-event-id too long: 422": ({"last": "1" * 41}, False),
    "another env's token: 403": ({"env": "staging"}, False),
    "no token: 401": ({"token": None}, False),
    "unknown token: 401": ({"token": "nope"}, False),
    "bad env name: 422": ({"env": "Bad Env"}, False),
    "unknown env, admin: 404": ({"env": "nowhere", "token": "admin"}, False),
    "unknown parameter": ({"query": "environment=production&x=1"}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stream_fastpath__any_request__same_answer_as_the_route(
    served: tuple[Deployment, LiveServer], case: str
) -> None:
    deployment, server = served
    spec, fast = CASES[case]
    _kill(deployment, server)
    current = deployment.store.environment_version(ENV)
    token = {"admin": deployment.admin, None: None}.get(
        spec.get("token", "client"), spec.get("token")
    )
    if spec.get("token", "client") == "client":
        token = deployment.client_token
    query = spec.get("query", f"environment={spec.get('env', ENV)}")
    headers = {}
    if "last" in spec:
        last = spec["last"].replace("current-1", str(current - 1))
        headers["Last-Event-ID"] = last.replace("current", str(current))
    answers = []
    for on in (False, True):
        stream, answered = _open(server, fast=on, token=token, query=query, **headers)
        try:
            assert answered is (fast and on)
            if stream.status == 200:
                # ": connected", then the replayed change or the snapshot (nothing
                # when the stream is current)
                body = stream.events(1 if spec.get("last") == "current" else 2)
            else:
                body = [stream.error_body().decode()]
            headers_seen = {k: v for k, v in stream.headers.items() if k != "x-request-id"}
            answers.append((stream.status, headers_seen, body))
        finally:
            stream.close()
    assert answers[0] == answers[1]
    assert answers[0][0] < 500


def test_stream_fastpath__changes__every_stream_gets_each_in_order(
    served: tuple[Deployment, LiveServer],
) -> None:
    deployment, server = served
    streams = [_open(server, fast=True, token=deployment.client_token, query=f"environment={ENV}")]
    streams += [
        _open(server, fast=True, token=deployment.admin, query=f"environment={ENV}")
        for _ in range(2)
    ]
    try:
        assert all(answered for _, answered in streams)
        first = [s.events(2)[1] for s, _ in streams]
        # Under uvicorn's httptools protocol the streams write changes to the socket
        # themselves (checked here so that path cannot go unused unnoticed).
        held = [sub for feed in server.sdk.broadcaster._feeds.values() for sub in feed.subscribers]
        assert len(held) == 3
        assert all(isinstance(sub, DirectStream) and sub._writer is not None for sub in held)
        start = int(first[0].split("\n")[0].removeprefix("id: "))
        for n in range(10):
            _kill(deployment, server, "kill" if n % 2 == 0 else "unkill")
        for stream, _ in streams:
            events = stream.events(12)[2:]
            ids = [int(e.split("\n")[0].removeprefix("id: ")) for e in events]
            assert ids == list(range(start + 1, start + 11))
            assert all("event: change" in e for e in events)
            killed = ['"killed":true' in e for e in events]
            assert killed == [n % 2 == 0 for n in range(10)]
    finally:
        for stream, _ in streams:
            stream.close()


def test_stream_fastpath__per_token_cap__the_route_answers_429(
    served: tuple[Deployment, LiveServer],
) -> None:
    deployment, server = served
    held = [
        _open(server, fast=True, token=deployment.client_token, query=f"environment={ENV}")[0]
        for _ in range(3)
    ]
    try:
        for stream in held:
            stream.events(2)
        extra, answered = _open(
            server, fast=True, token=deployment.client_token, query=f"environment={ENV}"
        )
        assert (extra.status, answered) == (429, False)
        assert b"too_many_streams" in extra.error_body()
        extra.close()
    finally:
        for stream in held:
            stream.close()


def test_stream_fastpath__client_leaves__stream_released(
    served: tuple[Deployment, LiveServer],
) -> None:
    deployment, server = served
    broadcaster = server.sdk.broadcaster
    streams = [
        _open(server, fast=True, token=deployment.client_token, query=f"environment={ENV}")[0]
        for _ in range(3)
    ]
    for stream in streams:
        stream.events(2)
    assert broadcaster.stream_count() == 3
    for stream in streams:
        stream.close()
    wait_for(lambda: broadcaster.stream_count() == 0, what="the streams released")
    # The token's count went back to 0: it may open 3 again.
    again = [
        _open(server, fast=True, token=deployment.client_token, query=f"environment={ENV}")
        for _ in range(3)
    ]
    try:
        assert [(s.status, answered) for s, answered in again] == [(200, True)] * 3
    finally:
        for stream, _ in again:
            stream.close()


def test_stream_fastpath__heartbeat_only_after_silence(deployment: Deployment) -> None:
    deployment.create_flag("checkout")
    server = deployment.server(heartbeat=0.3)
    stream, answered = _open(
        server, fast=True, token=deployment.client_token, query="environment=production"
    )
    try:
        assert answered
        events = stream.events(4)
        assert events[2:] == [": heartbeat", ": heartbeat"]
    finally:
        stream.close()


def test_resume__a_suspended_coroutine__runs_to_its_end_with_its_result_and_errors() -> None:
    """``_resume`` finishes a coroutine whose first step suspended, as a task would:
    values and exceptions of the futures it waits on reach it."""

    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        seen: list[Any] = []
        futures = [loop.create_future() for _ in range(2)]

        async def body() -> None:
            seen.append(await futures[0])
            await asyncio.sleep(0)
            try:
                await futures[1]
            except ValueError as exc:
                seen.append(str(exc))

        coro = body()
        pending = coro.send(None)
        assert pending is futures[0]
        task = loop.create_task(_resume(coro, pending))
        loop.call_soon(futures[0].set_result, "first")
        loop.call_later(0.01, futures[1].set_exception, ValueError("second"))
        await task
        return seen

    assert asyncio.run(scenario()) == ["first", "second"]


def test_socket_writer__another_server_or_response__none() -> None:
    """Only a chunked response of uvicorn's httptools protocol is written directly."""

    async def plain_send(message: Any) -> None:
        return None

    assert socket_writer(plain_send) is None
    assert socket_writer(None) is None


def test_chunk__frames_in_turn__each_its_own_chunk() -> None:
    a, b = b"id: 1\nevent: change\ndata: {}\n\n", b"x" * 300
    assert _chunk(a) == b"%x\r\n" % len(a) + a + b"\r\n"
    assert _chunk(b) == b"12c\r\n" + b + b"\r\n"
    assert _chunk(a) == b"%x\r\n" % len(a) + a + b"\r\n"
