"""``SnapshotFastPath``: the SDK's hot requests answered without the FastAPI stack.

``GET /sdk/v1/snapshot`` from memory (below); ``POST /sdk/v1/instances`` when the
report needs no I/O; ``GET /sdk/v1/stream`` opened as an ``api.streams.DirectStream``
(the token cached, or read once for every concurrent open with it: a replica's
restart brings its streams back in one token read, not one per stream).

Every SDK process polls its snapshot every few seconds, and with Redis as a hint
every process fetches it on every change: the server's commonest request. Through
the whole FastAPI stack (routing, dependency solving, two thread-pool hops, a token
read and a version read in the database) a ``304`` cost about 5 ms of server CPU on
this project's 2-core test machine, so 200 polls a second saturated a core. This
ASGI middleware answers the same request from what the replica already holds:

* the token, from the store's token cache (``flags.store.token_cache``);
* the environment's version, from the broadcaster (``Broadcaster.known_version``:
  changes made through this replica at once, others as Redis or the database poll
  brings them);
* the body, from the rendered-snapshot cache, or one database read per environment
  and version shared by every request that waits for it meanwhile.

It answers only what it can answer exactly as the route would (same status,
headers and body): anything else (a token not in the cache, a scope that does not
cover the environment, a malformed query or header, a replica that cannot vouch for
the version) passes through to ``api.routes.sdk.get_snapshot`` unchanged, which
reads the database and gives every error its usual answer.

``min_version`` (what an SDK sends when a Redis hint announced a version): if the
replica does not know a version at least that new, the body is read from the
database, so a hint that outran this replica's own news is never answered with the
older snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import parse_bearer
from api.routes.sdk import (
    MAX_VERSION,
    InstanceBody,
    RenderedSnapshot,
    SdkServices,
    end_streams_on_signal,
    etag_matches,
    instance_owner,
    parse_last_event_id,
    snapshot_headers,
    stream_snapshot,
)
from api.service import Principal
from api.streams import SERVER_SEND, DirectStream, serve_direct
from flags.errors import FlagrailError
from flags.model import TokenInfo, validate_environment_name
from flags.store.sql import SqlFlagStore

__all__ = ["FastPathStats", "SnapshotFastPath", "cached_bearer", "single_headers"]

_T = TypeVar("_T")

PATH = "/sdk/v1/snapshot"
INSTANCES = "/sdk/v1/instances"
STREAM = "/sdk/v1/stream"
MAX_LAST_EVENT_ID = 40
# A larger instance report goes to the route (the model bounds it well below this).
MAX_INSTANCE_BODY = 4096
ACCEPTED = b'{"accepted":true}'
# The route's own bounds: beyond them the route answers (a 422 naming the field).
MAX_ENVIRONMENT = 40
MAX_IF_NONE_MATCH = 200


@dataclass
class FastPathStats:
    """At ``app.state.fastpath``: how many requests the fast paths answered and how
    many they passed to the route. ``enabled`` False passes every one."""

    enabled: bool = True
    answered: int = 0
    passed: int = 0
    # ``api.kill_fastpath.KillFastPath``: kills and unkills it answered / passed on.
    kills_answered: int = 0
    kills_passed: int = 0


class SnapshotFastPath:
    """ASGI middleware (see the module docstring). ``state``: the app's state, holding
    ``sdk`` (``SdkServices``), ``store`` and ``fastpath`` (``FastPathStats``)."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state
        self.stats: FastPathStats = state.fastpath
        self._reads: dict[str, asyncio.Lock] = {}
        # Token reads in progress, by secret: a reconnect storm reads each token once.
        self._auths: dict[str, asyncio.Future[TokenInfo | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == INSTANCES and scope["method"] == "POST":
            await self._instance_report(scope, receive, send)
            return
        if scope["type"] == "http" and scope["path"] == STREAM and scope["method"] == "GET":
            await self._stream(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        answer = await self._attempt(lambda: self._answer(scope))
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _attempt(self, answer: Callable[[], Awaitable[_T | None]]) -> _T | None:
        """``answer()`` when the fast path is on; None when it is off, when ``answer``
        declines (None), or when the database is away (the route then answers, and
        says so its own way). Counted in ``stats``."""
        result = None
        if self.stats.enabled:
            try:
                result = await answer()
            except FlagrailError:
                result = None
        if result is None:
            self.stats.passed += 1
        else:
            self.stats.answered += 1
        return result

    def _wired(self) -> tuple[SdkServices, SqlFlagStore] | None:
        """The app's SDK services and store, once the app is built."""
        services: SdkServices | None = getattr(self.state, "sdk", None)
        store: SqlFlagStore | None = getattr(self.state, "store", None)
        if services is None or store is None:
            return None
        return services, store

    async def _answer(self, scope: Scope) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        wired = self._wired()
        query = _query(scope["query_string"], ("environment", "min_version"))
        headers = single_headers(scope, (b"authorization", b"if-none-match"))
        if wired is None or query is None or headers is None:
            return None
        services, store = wired
        env, min_version = query
        if_none_match = headers.get(b"if-none-match")
        if if_none_match is not None and len(if_none_match) > MAX_IF_NONE_MATCH:
            return None
        token = cached_bearer(store, headers.get(b"authorization"))
        if token is None or not token.covers(env):
            return None
        known = services.broadcaster.known_version(env)
        if known is None:
            return None
        rendered: RenderedSnapshot | None = None
        if min_version is not None and known < min_version:
            rendered = await self._read(services, store, env, min_version)
            version = rendered.version
        else:
            version = known
        headers = _raw(snapshot_headers(services, env))
        headers.append((b"etag", b'"%d"' % version))
        if if_none_match and etag_matches(if_none_match, version):
            return 304, headers, b""
        if rendered is None:
            rendered = services.snapshots.cached(env, version)
        if rendered is None:
            rendered = await self._read(services, store, env, version)
            headers[-1] = (b"etag", b'"%d"' % rendered.version)
        headers.append((b"content-type", b"application/json"))
        headers.append((b"content-length", b"%d" % len(rendered.body)))
        return 200, headers, rendered.body

    async def _instance_report(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /sdk/v1/instances``: every SDK process sends one after each change it
        applies, so a fleet's reports follow every kill. Recorded here when that needs
        no I/O (the token cached, the instance's owner cached); anything else, the body
        included, goes to the route as it came."""
        body, complete = await read_body(receive, MAX_INSTANCE_BODY)
        if body is None:  # the client left
            return
        accepted = False
        if self.stats.enabled and complete:
            try:
                accepted = self._record(scope, body)
            except (FlagrailError, ValueError):  # the route answers it its own way
                accepted = False
        if not accepted:
            self.stats.passed += 1
            await self.app(scope, replay(body, complete, receive), send)
            return
        self.stats.answered += 1
        headers = [
            (b"content-length", b"%d" % len(ACCEPTED)),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": ACCEPTED})

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /sdk/v1/stream``: answered with a ``DirectStream`` when the route would
        answer 200 and that needs at most one token read and one snapshot read (both
        shared by concurrent streams); anything else goes to the route as it came."""
        opened = await self._attempt(lambda: self._open_stream(scope, send))
        if opened is None:
            await self.app(scope, receive, send)
            return
        stream, services, store, resume = opened
        broadcaster = services.broadcaster
        env = stream.environment

        async def first() -> tuple[list[bytes], int]:
            replay = broadcaster.replay(env, resume) if resume is not None else None
            if replay is not None:
                assert resume is not None
                frames = [services.frames.frame(event) for event in replay]
                return frames, replay[-1].version if replay else resume
            rendered = await stream_snapshot(services, store, env)
            return [rendered.frame], rendered.version

        await serve_direct(stream, receive, send, first, broadcaster.unsubscribe)

    async def _open_stream(
        self, scope: Scope, send: Send
    ) -> tuple[DirectStream, SdkServices, SqlFlagStore, int | None] | None:
        """A stream attached to the broadcaster, or None for the route to answer."""
        wired = self._wired()
        query = _query(scope["query_string"], ("environment",))
        headers = single_headers(scope, (b"authorization", b"last-event-id"))
        if wired is None or query is None or headers is None:
            return None
        services, store = wired
        env = query[0]
        last_event_id = headers.get(b"last-event-id")
        if last_event_id is not None and len(last_event_id) > MAX_LAST_EVENT_ID:
            return None
        token = await self._token(store, headers.get(b"authorization"))
        if token is None or not token.covers(env):
            return None
        broadcaster = services.broadcaster
        settings = services.settings
        if broadcaster.latest(env) is None:  # unseen: the route reads it (or says 404)
            return None
        if broadcaster.closing or broadcaster.stream_count() >= settings.max_streams:
            return None  # the route's 503
        end_streams_on_signal(broadcaster)
        principal = Principal.from_token(token)
        stream = DirectStream(
            env,
            asyncio.get_running_loop(),
            send,
            owner=principal.token_id or principal.name,
            services=services,
            store=store,
            max_items=settings.stream_queue,
            heartbeat=float(self.state.settings.heartbeat_interval),
            server_send=scope.get(SERVER_SEND),
        )
        if not broadcaster.attach(stream, max_per_owner=settings.max_streams_per_token):
            return None  # the route's 429
        return stream, services, store, parse_last_event_id(last_event_id)

    async def _token(self, store: SqlFlagStore, authorization: str | None) -> TokenInfo | None:
        """The live token of a well-formed ``Authorization`` value: from the token
        cache, else one read in the thread pool shared by every request with the same
        token meanwhile. None for anything the route must answer (unknown token,
        malformed header). Raises ``FlagrailError`` when the database is away."""
        try:
            secret = parse_bearer(authorization)
        except FlagrailError:
            return None
        token = store.cached_token(secret)
        if token is not None:
            return token
        pending = self._auths.get(secret)
        if pending is None:
            pending = asyncio.ensure_future(run_in_threadpool(store.authenticate, secret))
            self._auths[secret] = pending
            pending.add_done_callback(lambda _: self._auths.pop(secret, None))
        return await asyncio.shield(pending)

    def _record(self, scope: Scope, body: bytes) -> bool:
        """Record the report if it is valid and needs no I/O; False to pass it on."""
        wired = self._wired()
        headers = single_headers(scope, (b"authorization", b"content-type"))
        if wired is None or headers is None:
            return False
        services, store = wired
        content_type = headers.get(b"content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return False
        token = cached_bearer(store, headers.get(b"authorization"))
        if token is None:
            return False
        report = InstanceBody.model_validate_json(body).to_report()
        validate_environment_name(report.environment)
        if not token.covers(report.environment):
            return False
        if not services.telemetry.owner_known(report.instance_id):
            return False
        return services.announce(report, instance_owner(Principal.from_token(token)))

    async def _read(
        self, services: SdkServices, store: SqlFlagStore, env: str, at_least: int
    ) -> RenderedSnapshot:
        """The environment's snapshot from the database, rendered, unless a render at
        least ``at_least`` new is held. Requests waiting on the same environment share
        one read: a change followed by every SDK's fetch reads the database once."""
        held = services.snapshots.newest(env)
        if held is not None and held.version >= at_least:
            return held
        lock = self._reads.setdefault(env, asyncio.Lock())
        async with lock:
            held = services.snapshots.newest(env)
            if held is not None and held.version >= at_least:
                return held
            snapshot = await run_in_threadpool(store.snapshot, env)
            return services.snapshots.render(snapshot)


async def read_body(receive: Receive, limit: int) -> tuple[bytes | None, bool]:
    """(body, complete): the request body read until it ends or passes ``limit`` bytes,
    and whether that was all of it; (None, False) when the client left first."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None, False
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            break
    return body, not more


def replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """``receive`` that first gives back ``body`` (already read by ``read_body``), then
    whatever the client still sends: the app downstream reads the request as it came."""
    replayed = False

    async def replayed_receive() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replayed_receive


def single_headers(scope: Scope, names: tuple[bytes, ...]) -> dict[bytes, str] | None:
    """The request's ``names`` headers (latin-1 text); None when one of them repeats
    (the route decides what a repeated header means)."""
    found: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in names:
            if name in found:
                return None
            found[name] = value.decode("latin-1")
    return found


def cached_bearer(store: SqlFlagStore, authorization: str | None) -> TokenInfo | None:
    """The live token of a well-formed ``Authorization`` value if the token cache holds
    it; None otherwise (the route authenticates it)."""
    try:
        return store.cached_token(parse_bearer(authorization))
    except FlagrailError:
        return None


def _query(raw: bytes, names: tuple[str, ...]) -> tuple[str, int | None] | None:
    """(environment, min_version) of a query the route would accept as it is, with
    parameters among ``names`` only; None for anything else (the route answers it)."""
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in values or name not in names:
            return None
        values[name] = value
    env = values.get("environment")
    if env is None or len(env) > MAX_ENVIRONMENT:
        return None
    try:
        validate_environment_name(env)
    except FlagrailError:
        return None
    text = values.get("min_version")
    if text is None:
        return env, None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_VERSION:
        return None
    return env, int(text)


def _raw(headers: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
