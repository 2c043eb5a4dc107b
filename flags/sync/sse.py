"""Server-Sent Events: the wire format, a parser, and the SDK's reconnecting consumer.

The stream of ``GET /sdk/v1/stream?environment=E``::

    id: 41
    event: snapshot
    data: {"environment": "production", "version": 41, "flags": {...}}

    id: 42
    event: change
    data: {"version": 42, "flag": "checkout.v2", "state": {...}}

    : heartbeat

``id`` is the environment version, so a reconnect sends ``Last-Event-ID`` and the
server resumes with the missed changes when it still holds them in memory, or
with a fresh snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from flags.errors import FlagrailError
from flags.model import FlagChanged, Snapshot
from flags.sync import Backoff, ChangeSink
from flags.sync.poll import auth_headers, raise_for_status

__all__ = ["SseConsumer", "SseEvent", "SseParser", "format_event", "parse_events"]

log = logging.getLogger("flagrail.sync.sse")

HEARTBEAT = "heartbeat"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. A comment line gives ``event == "heartbeat"``."""

    event: str
    data: str
    id: str | None = None


def format_event(event: str, data: Any, event_id: int | str | None = None) -> bytes:
    """One SSE frame; ``data`` is JSON-encoded onto a single ``data:`` line."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


class SseParser:
    """Incremental parser of SSE lines (without their line endings), per the WHATWG spec.

    Not thread-safe: one per connection.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> SseEvent | None:
        """Feed one line; returns the event a blank line dispatches, or a heartbeat."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return SseEvent(HEARTBEAT, line[1:].strip(), None)
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = self.last_id = value
        return None


def parse_events(lines: Iterable[str]) -> Iterator[SseEvent]:
    parser = SseParser()
    for line in lines:
        event = parser.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event


class SseConsumer:
    """The SDK's stream: connect, deliver events to ``sink``, reconnect with backoff + jitter.

    Runs on its own daemon thread. It connects only while ``wanted()`` is true (the
    client turns it off while Redis is live) and leaves the stream when ``wanted()``
    turns false at the next event or heartbeat. ``live`` is true from the first
    event of a connection until it drops. A ``change`` for another version than
    the next is the sink's business (it resyncs); an unreadable event asks the sink
    to resync. ``last_event_id()`` gives the version to resume from.
    """

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        token: str | None,
        environment: str,
        sink: ChangeSink,
        *,
        last_event_id: Callable[[], int | None],
        wanted: Callable[[], bool] = lambda: True,
        on_live: Callable[[bool], None] | None = None,
        read_timeout: float = 45.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.http = http
        self.url = f"{url.rstrip('/')}/sdk/v1/stream"
        self.headers = {**auth_headers(token), "Accept": "text/event-stream"}
        self.environment = environment
        self.sink = sink
        self.last_event_id = last_event_id
        self.wanted = wanted
        self.on_live = on_live
        self.read_timeout = read_timeout
        self.live = False
        self.connects = 0
        self._backoff = backoff or Backoff(0.2, 5.0)
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: httpx.Response | None = None

    def start(self) -> None:
        if self._thread is None:
            self._closed.clear()
            self._thread = threading.Thread(target=self._run, name="flagrail-sse", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Re-check ``wanted()`` now (e.g. Redis just went down)."""
        self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        response = self._response
        if response is not None:
            # Closing from another thread may race the reader: harmless.
            with contextlib.suppress(Exception):
                response.close()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def _set_live(self, live: bool) -> None:
        if live != self.live:
            self.live = live
            if self.on_live is not None:
                self.on_live(live)

    def _run(self) -> None:
        failed_once = False
        while not self._closed.is_set():
            if not self.wanted():
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._connect()
                failed_once = False
            except (httpx.HTTPError, FlagrailError, OSError, ValueError) as exc:
                if not failed_once and not self._closed.is_set():
                    log.warning("event stream of %s unavailable: %s", self.environment, exc)
                    failed_once = True
            except Exception:  # the consumer must outlive anything: logged, reconnects
                log.exception("event stream of %s failed; reconnecting", self.environment)
            finally:
                self._response = None
                self._set_live(False)
            if not self._closed.is_set():
                self._wake.wait(self._backoff.next())
                self._wake.clear()

    def _connect(self) -> None:
        headers = dict(self.headers)
        last = self.last_event_id()
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        timeout = httpx.Timeout(5.0, read=self.read_timeout)
        with self.http.stream(
            "GET",
            self.url,
            params={"environment": self.environment},
            headers=headers,
            timeout=timeout,
        ) as response:
            self._response = response
            if response.status_code != 200:
                response.read()
                raise_for_status(response)
                raise httpx.HTTPStatusError(
                    f"stream answered {response.status_code}",
                    request=response.request,
                    response=response,
                )
            self.connects += 1
            for event in parse_events(response.iter_lines()):
                if self._closed.is_set():
                    return
                self._set_live(True)
                self._backoff.reset()
                self._deliver(event)
                if not self.wanted():
                    return

    def _deliver(self, event: SseEvent) -> None:
        if event.event == HEARTBEAT:
            return
        try:
            if event.event == "snapshot":
                self.sink.receive_snapshot(Snapshot.from_dict(json.loads(event.data)), "stream")
            elif event.event == "change":
                data = json.loads(event.data)
                if not isinstance(data, dict):
                    raise ValueError("a change event must be a JSON object")
                data.setdefault("environment", self.environment)
                self.sink.receive_change(FlagChanged.from_dict(data), "stream")
            elif event.event == "resync":
                self.sink.request_resync("the server asked for a resync")
        except ValueError as exc:  # ValidationError is a ValueError too
            self.sink.request_resync(f"unreadable {event.event} event: {exc}")
