"""SSE streams written directly by the change fan-out (``GET /sdk/v1/stream``).

The route in ``api.routes.sdk`` gives each stream a queue, a generator and a
``StreamingResponse``: a change then costs, per stream, a queue wake-up, a task
step through the generator and the response's send, about 0.1 ms of server CPU
(over a second per change at 10,000 streams on a 2-core machine). A
``DirectStream`` is a broadcaster subscriber whose ``put`` writes the change's
frame (rendered once per change, ``ChangeFrames``) to its response at once, from
the one loop callback that hands the change to every stream of the loop: no task
and no queue per stream on the way.

The write is the ASGI ``send`` coroutine, stepped once: with the client keeping
up it completes without suspending (uvicorn writes to the socket and returns).
When it suspends (the client's socket buffer is full and the server applies
back-pressure), the rest of that write and the items that arrive meanwhile move
to a task of the stream's own, with the route's bound: past ``max_items`` queued
items the stream is sent one snapshot instead of the backlog. A slow reader
therefore never holds up the others, and its memory stays bounded.

Under uvicorn's httptools protocol (what ``flagrail serve`` runs) a write that
would not wait is the socket write itself: the frame, chunked once per change, goes
to the connection's transport with the checks uvicorn's own ``send`` makes
(``socket_writer``); under any other server, or when the connection applies
back-pressure, the ASGI ``send`` does it.

Heartbeats come from one timer per stream, which writes only after
``heartbeat`` seconds of silence. A disconnect is seen by one task per stream
waiting on ``receive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.types import Receive, Send

from api.routes.sdk import ChangeFrames, SdkServices, SnapshotCache, stream_snapshot
from flags.errors import FlagrailError
from flags.model import FlagChanged, Snapshot
from flags.store import FlagStore
from flags.sync.broadcast import RESYNC, Item, ItemQueue, Resync

__all__ = ["SERVER_SEND", "STREAM_HEADERS", "DirectStream", "serve_direct", "socket_writer"]

log = logging.getLogger("flagrail.api.streams")

# The route's own response headers (``StreamingResponse`` with these): both paths
# answer a stream the same way.
STREAM_HEADERS: list[tuple[bytes, bytes]] = [
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]
# The scope key under which ``api.app.FlagrailApp`` keeps the server's own ``send``.
SERVER_SEND = "flagrail.server_send"
CONNECTED = b": connected\n\n"
HEARTBEAT = b": heartbeat\n\n"
_END = {"type": "http.response.body", "body": b"", "more_body": False}


class DirectStream:
    """One open stream (see the module docstring). Created and used on one event
    loop; ``push`` is the only method safe from other threads.

    Lifecycle: ``attach`` it to the broadcaster (items queue while it starts), then
    ``start(sent)`` once the first snapshot (or replay) up to version ``sent`` is
    written; ``done`` resolves when the stream ends (closed by the broadcaster, the
    client gone, a write failed).
    """

    def __init__(
        self,
        environment: str,
        loop: asyncio.AbstractEventLoop,
        send: Send,
        *,
        owner: str | None,
        services: SdkServices,
        store: FlagStore,
        max_items: int,
        heartbeat: float,
        server_send: Any = None,
    ) -> None:
        """``server_send``: the server's own ``send`` (``scope[SERVER_SEND]``), for
        ``socket_writer`` once the response has started."""
        self.environment = environment
        self.loop = loop
        self.owner = owner
        self.done: asyncio.Future[None] = loop.create_future()
        self._send = send
        self._server_send = server_send
        self._writer: Callable[[bytes], bool] | None = None
        self._services = services
        self._frames: ChangeFrames = services.frames
        self._snapshots: SnapshotCache = services.snapshots
        self._store = store
        self._heartbeat = heartbeat
        self._sent = -1
        # While busy (starting, or a write or snapshot read in progress), items queue.
        self._busy = True
        self._queue = ItemQueue(max_items)
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_write = loop.time()

    @property
    def overflows(self) -> int:
        """Times this stream fell behind and was sent one snapshot for its backlog."""
        return self._queue.overflows

    # ------------------------------------------------------------------ input
    def push(self, item: Item) -> None:
        """Thread-safe; a loop already closed (server stopping) is ignored."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.put, item)

    def put(self, item: Item) -> None:
        """On the loop: write ``item`` now when nothing is in progress, else queue it
        (bounded). Never raises: a failure ends this stream only."""
        if self.done.done():
            return
        if self._busy:
            self._queue.put(item)
            return
        try:
            if item is None:
                self.end()
                return
            frame = self._frame(item)
            if frame is RESYNC:  # needs a snapshot, maybe from the database
                self._busy = True
                self._queue.put(RESYNC)  # not busy: the queue was empty
                self._task = self.loop.create_task(self._drain())
            elif frame is not None:
                self._write_now(frame)
        except Exception:
            log.exception("stream of %s failed", self.environment)
            self.end()

    def _frame(self, item: FlagChanged | Snapshot | Resync) -> bytes | Resync | None:
        """The bytes that deliver ``item`` after what was sent (None: nothing to send;
        ``RESYNC``: a snapshot is needed). Advances the version sent."""
        if isinstance(item, FlagChanged):
            if item.version <= self._sent:
                return None
            if item.version != self._sent + 1:  # cannot happen in order; heal anyway
                return RESYNC
            self._sent = item.version
            return self._frames.frame(item)
        if isinstance(item, Snapshot):
            if item.version < self._sent:
                return None
            self._sent = item.version
            return self._snapshots.render(item).frame
        return RESYNC

    # ------------------------------------------------------------------ output
    def _write_now(self, frame: bytes) -> None:
        """Start writing ``frame``; finished here unless the write suspends, then in
        the stream's task (items queue meanwhile)."""
        writer = self._writer
        if writer is not None and writer(frame):
            self._last_write = self.loop.time()
            return
        coro = self._send({"type": "http.response.body", "body": frame, "more_body": True})
        try:
            pending = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            self._last_write = self.loop.time()
            return
        except Exception as exc:
            log.debug("stream of %s: write failed: %s", self.environment, exc)
            self.end()
            return
        self._busy = True
        self._task = self.loop.create_task(self._drain(coro, pending))

    async def _write(self, frame: bytes) -> None:
        await self._send({"type": "http.response.body", "body": frame, "more_body": True})
        self._last_write = self.loop.time()

    async def _drain(self, coro: Any = None, pending: Any = None) -> None:
        """Finish a suspended write, then every queued item, then go back to writing
        from ``put``."""
        try:
            if coro is not None:
                await _resume(coro, pending)
                self._last_write = self.loop.time()
            while self._queue:
                item = self._queue.pop()
                if item is None:
                    self.end()
                    return
                frame = self._frame(item)
                if frame is RESYNC:
                    rendered = await stream_snapshot(self._services, self._store, self.environment)
                    if rendered.version < self._sent:
                        continue
                    self._sent = rendered.version
                    frame = rendered.frame
                if frame is not None:
                    await self._write(frame)
            self._busy = False
        except asyncio.CancelledError:
            raise
        except FlagrailError as exc:
            log.warning("stream of %s ended: %s", self.environment, exc)
            self.end()
        except Exception:
            log.exception("stream of %s failed", self.environment)
            self.end()

    async def start(self, sent: int) -> None:
        """The stream has been sent everything up to version ``sent``: deliver what
        queued meanwhile, then take items as they come, with heartbeats."""
        self._sent = sent
        if self._server_send is not None:
            self._writer = socket_writer(self._server_send)
        await self._drain()
        self._timer = self.loop.call_later(self._heartbeat, self._beat)

    def _beat(self) -> None:
        if self.done.done():
            return
        silence = self.loop.time() - self._last_write
        wait = self._heartbeat - silence
        if wait <= 0.001:
            if not self._busy:
                self._write_now(HEARTBEAT)
            wait = self._heartbeat
        self._timer = self.loop.call_later(wait, self._beat)

    def end(self) -> None:
        """End the stream (its response is closed by ``serve_direct``)."""
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Stop the timer and any write in progress (after ``done``)."""
        self.end()
        if self._timer is not None:
            self._timer.cancel()
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()


def socket_writer(server_send: Any) -> Callable[[bytes], bool] | None:
    """A function writing one frame, as a chunk of the response's body, straight to
    the connection, for a response whose start uvicorn's httptools protocol has sent
    with chunked coding; None for any other server or response.

    It returns False (nothing written) when the write is the ASGI ``send``'s to make:
    the connection applies back-pressure (``send`` waits for it to drain), or the
    response is complete. It writes nothing to a connection the client has left
    (``send`` drops those writes too), and says True. The chunk of a frame is encoded
    once for every stream that writes the same frame.
    """
    cycle = getattr(server_send, "__self__", None)
    if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
        return None
    needed = ("transport", "flow", "disconnected", "response_complete", "chunked_encoding")
    if not all(hasattr(cycle, name) for name in needed) or cycle.chunked_encoding is not True:
        return None
    transport, flow = cycle.transport, cycle.flow

    def write(frame: bytes) -> bool:
        if cycle.disconnected:
            return True
        if flow.write_paused or cycle.response_complete:
            return False
        transport.write(_chunk(frame))
        return True

    return write


# (frame, its chunk): one tuple, replaced whole, so loops in several threads (one
# per server in tests) never pair a frame with another frame's chunk.
_memo: tuple[bytes, bytes] = (b"", b"0\r\n\r\n")


def _chunk(frame: bytes) -> bytes:
    """``frame`` in HTTP/1.1 chunked coding; the last one is kept, so a change's frame
    is encoded once for all the streams that write it in a row."""
    global _memo
    memo = _memo
    if memo[0] is not frame:
        memo = (frame, b"%x\r\n%s\r\n" % (len(frame), frame))
        _memo = memo
    return memo[1]


async def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> None:
    """Drive ``coro`` to its end after its first step yielded ``pending`` (what an
    asyncio coroutine yields: a future to wait on, or None to let the loop run)."""
    try:
        while True:
            try:
                if pending is None:
                    await asyncio.sleep(0)
                else:
                    # What a Task does with a future its coroutine yielded: clear the
                    # flag the yield set, then wait (awaiting it with the flag still
                    # set is an error).
                    pending._asyncio_future_blocking = False
                    await pending
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the awaited future failed: the coroutine decides
                try:
                    pending = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                pending = coro.send(None)
            except StopIteration:
                return
    finally:
        coro.close()  # a no-op once it has returned


async def serve_direct(
    stream: DirectStream,
    receive: Receive,
    send: Send,
    first: Callable[[], Awaitable[tuple[list[bytes], int]]],
    detach: Callable[[DirectStream], None],
) -> None:
    """Answer one stream with ``stream`` (already attached to the broadcaster):
    response start, ``: connected``, the frames ``first`` returns (a replay or a
    snapshot, up to a version), then ``stream`` writes changes as they come, until
    it is done. ``detach`` unsubscribes it. Errors after the response started end
    the stream (a client reconnects), never the server."""
    listener: asyncio.Task[None] | None = None
    try:
        await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        await send({"type": "http.response.body", "body": CONNECTED, "more_body": True})
        listener = asyncio.get_running_loop().create_task(_until_disconnect(receive, stream))
        frames, sent = await first()
        for frame in frames:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await stream.start(sent)
        await stream.done
    except FlagrailError as exc:
        log.warning("stream of %s ended: %s", stream.environment, exc)
    finally:
        detach(stream)
        stream.close()
        if listener is not None:
            listener.cancel()
    with contextlib.suppress(Exception):  # the client may be gone: nothing to end
        await send(_END)


async def _until_disconnect(receive: Receive, stream: DirectStream) -> None:
    with contextlib.suppress(Exception):
        while (await receive())["type"] != "http.disconnect":
            pass
    stream.end()  # the client is gone: nothing more to write
