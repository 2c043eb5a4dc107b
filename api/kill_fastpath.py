"""``KillFastPath``: ``POST /admin/flags/{key}/kill`` and ``/unkill`` without the FastAPI stack.

A kill is the request an operator waits on in an incident, and its end-to-end figure
(from the send to the change applied in every SDK process, #20) is mostly the
server's own work before the commit. Through FastAPI (routing, dependency solving,
body and response models, two thread-pool hops) the request cost about as much server
CPU as the kill's transaction on PostgreSQL. This ASGI middleware runs the same
service call, ``AdminService.kill``/``unkill``, with the same principal, command and
request id, and answers with the same status, headers and body, on a path that does
only that.

It takes only the plain request: a bearer token the store's token cache holds, whose
role may do it; no query string (``?wait=``, ``?break_glass=``); no
``X-Flagrail-Actor`` (a guard's claim); one ``Content-Type: application/json``; a
body the route's own model (``KillRequest``) accepts. Anything else goes to the route
as it came, the body replayed, and gets its usual answer. Once the service is called,
its errors are answered by ``api.errors``, the one mapping from errors to HTTP.
"""

from __future__ import annotations

import json
import re

import pydantic
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import State
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import flagrail_error_response, unexpected_error_response
from api.fastpath import FastPathStats, cached_bearer, read_body, replay, single_headers
from api.schemas import KillRequest, kill_json
from api.service import AdminService, Operation, Principal
from flags.errors import FlagrailError

__all__ = ["KillFastPath"]

# The route's path: one segment for the key (Starlette's default converter).
ROUTE = re.compile(r"/admin/flags/([^/]+)/(kill|unkill)")
# A larger body goes to the route (the model bounds a kill's body well below this).
MAX_BODY = 16384
JSON = "application/json"


class KillFastPath:
    """ASGI middleware (see the module docstring). ``state``: the app's state, holding
    ``service`` (``AdminService``), ``store`` and ``fastpath`` (``FastPathStats``:
    ``enabled`` False passes every request to the route)."""

    def __init__(self, app: ASGIApp, *, state: State) -> None:
        self.app = app
        self.state = state
        self.stats: FastPathStats = state.fastpath

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            match = ROUTE.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        key, action = match.group(1), match.group(2)
        principal = self._principal(scope, action) if self.stats.enabled else None
        if principal is None:
            self.stats.kills_passed += 1
            await self.app(scope, receive, send)
            return
        body, complete = await read_body(receive, MAX_BODY)
        if body is None:  # the client left
            return
        request = _kill_request(body) if complete else None
        if request is None:
            self.stats.kills_passed += 1
            await self.app(scope, replay(body, complete, receive), send)
            return
        self.stats.kills_answered += 1
        service: AdminService = self.state.service
        rid: str = scope["state"]["request_id"]
        command = request.to_command(key)
        operation = service.kill if action == "kill" else service.unkill
        response: JSONResponse
        try:
            result = await run_in_threadpool(operation, principal, command, request_id=rid)
            response = JSONResponse(kill_json(result))
        except FlagrailError as exc:
            response = flagrail_error_response(exc)
        except Exception as exc:  # a bug: answered as the app's last-resort handler does
            response = unexpected_error_response(exc)
        await response(scope, receive, send)

    def _principal(self, scope: Scope, action: str) -> Principal | None:
        """The principal the route's ``allowed`` dependency would make, when it needs no
        I/O and the role may act; else None (the route answers)."""
        if scope["query_string"]:
            return None
        names = (b"authorization", b"content-type", b"x-flagrail-actor")
        headers = single_headers(scope, names)
        if headers is None or b"x-flagrail-actor" in headers:
            return None
        if headers.get(b"content-type", "").lower() != JSON:
            return None
        store = getattr(self.state, "store", None)
        if store is None or getattr(self.state, "service", None) is None:
            return None
        token = cached_bearer(store, headers.get(b"authorization"))
        if token is None:
            return None
        principal = Principal.from_token(token)
        try:
            principal.allow(Operation.KILL if action == "kill" else Operation.UNKILL)
        except FlagrailError:
            return None
        return principal


def _kill_request(body: bytes) -> KillRequest | None:
    """The body as the route's model reads it; None when the route would refuse it."""
    try:
        return KillRequest.model_validate(json.loads(body))
    except (ValueError, pydantic.ValidationError):
        return None
