"""The console's pages: thin front ends over ``AdminService``, as the HTTP API is.

Every page resolves the session to a ``Principal`` (``user:<name>``) and calls the
service, so role and scope checks are the API's. Errors render as a page with the
status ``api.errors`` gives them; without a session a page redirects to the login.
Every POST checks the session's CSRF token before anything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.console import auth
from api.console.views import (
    STATE_WORDS,
    Grid,
    applied,
    diff,
    parse_state_form,
    state_fields,
    state_word,
)
from api.errors import status_for
from api.service import AdminService, Operation, Principal
from api.service.commands import (
    CreateToken,
    FlagFilter,
    Kill,
    MovePlan,
    PlanMove,
    SetState,
    history_filter,
)
from flags.errors import (
    ApprovalRequiredError,
    FlagrailError,
    ForbiddenError,
    UnauthenticatedError,
    ValidationError,
)
from flags.model import Action, FlagKind, Role
from flags.store.users import Session, UserStore

log = logging.getLogger(__name__)
router = APIRouter(prefix="/console", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
templates.env.globals["state_word"] = state_word
templates.env.filters["urlquote"] = lambda v: quote(str(v), safe="")

HEALTH_WINDOW = timedelta(minutes=5)
LAYERS_SHOWN = 200  # cache layer flags (keys with ".cache.") on the health page
LAYER_COUNTERS = (
    "hits",
    "misses",
    "corrupt_reads",
    "mismatches",
    "errors",
    "guard_breaches",
)


# ---------------------------------------------------------------- plumbing
def _service(request: Request) -> AdminService:
    return request.app.state.service  # type: ignore[no-any-return]


def _users(request: Request) -> UserStore:
    return request.app.state.console_users  # type: ignore[no-any-return]


def _settings(request: Request) -> auth.ConsoleSettings:
    return request.app.state.console_settings  # type: ignore[no-any-return]


def _render(
    request: Request,
    name: str,
    session: Session | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    principal = Principal.from_user(session.user) if session is not None else None
    return templates.TemplateResponse(
        request,
        name,
        {
            "session": session,
            "principal": principal,
            "may": (lambda op: principal is not None and principal.may(Operation(op))),
            "csrf": session.csrf if session is not None else "",
            **context,
        },
        status_code=status,
    )


def _error(request: Request, session: Session | None, exc: FlagrailError) -> Response:
    status = status_for(exc)
    return _render(
        request, "error.html", session, status, message=str(exc), field=getattr(exc, "field", None)
    )


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)


def _page(request: Request, build: Callable[[Session, Principal], Response]) -> Response:
    """Run a GET page: no session -> the login; a flagrail error -> an error page."""
    try:
        session = auth.current_session(request, _users(request))
    except UnauthenticatedError:
        return _login_redirect(request)
    try:
        return build(session, Principal.from_user(session.user))
    except FlagrailError as exc:
        return _error(request, session, exc)


async def _post(
    request: Request, act: Callable[[Session, Principal, dict[str, Any]], Response]
) -> Response:
    """Run a form POST: the session and its CSRF token first, then ``act``."""
    try:
        session = auth.current_session(request, _users(request))
    except UnauthenticatedError as exc:
        return _error(request, None, exc)
    form = dict(await request.form())
    try:
        auth.check_csrf(session, form.get("csrf"))
        return act(session, Principal.from_user(session.user), form)
    except FlagrailError as exc:
        return _error(request, session, exc)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _held(exc: ApprovalRequiredError) -> RedirectResponse:
    """A change held for approval (#16) is no error: to the change requests page, which
    says "pending approval: change request N" (``pending`` in the query)."""
    pending = ",".join(str(i) for i in exc.request_ids)
    return _see_other(f"/console/change-requests?{urlencode({'pending': pending})}")


def _text(form: dict[str, Any], name: str, limit: int = 500) -> str:
    value = str(form.get(name, "")).strip()
    if len(value) > limit:
        raise ValidationError(f"{name} must be at most {limit} characters", field=name)
    return value


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if not value.isdigit() or len(value) > 9:
        raise ValidationError(f"{name} must be a whole number", field=name)
    return int(value)


# ---------------------------------------------------------------- login
@router.get("")
def index() -> RedirectResponse:
    return _see_other("/console/flags")


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/console") and "//" not in target and "\\" not in target:
        return target
    return "/console/flags"


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    token = auth.new_login_token()
    response = _render(request, "login.html", None, login_token=token, next=_safe_next(next))
    auth.set_cookie(response, request, _settings(request), auth.LOGIN_COOKIE, token)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = dict(await request.form())
    users = _users(request)
    throttle = request.app.state.console_throttle
    name = str(form.get("username", "")).strip()[:64]
    address = request.client.host if request.client else "-"
    cookie = request.cookies.get(auth.LOGIN_COOKIE, "")
    token = auth.new_login_token()

    def again(message: str, status: int) -> Response:
        response = _render(
            request,
            "login.html",
            None,
            status,
            login_token=token,
            next=_safe_next(str(form.get("next", ""))),
            message=message,
            username=name,
        )
        auth.set_cookie(response, request, _settings(request), auth.LOGIN_COOKIE, token)
        return response

    submitted = str(form.get("csrf", ""))
    if not cookie or not submitted or cookie != submitted:
        return again("The login form expired; try again.", 403)
    try:
        throttle.check(name, address)
    except FlagrailError as exc:
        return again(str(exc), 429)
    try:
        user = users.verify(name, str(form.get("password", "")))
    except UnauthenticatedError as exc:
        throttle.failed(name, address)
        return again(str(exc), 401)
    session_id, _session = users.open_session(user)
    response = _see_other(_safe_next(str(form.get("next", ""))))
    auth.set_cookie(response, request, _settings(request), auth.SESSION_COOKIE, session_id)
    response.delete_cookie(auth.LOGIN_COOKIE, path=auth.COOKIE_PATH)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        _users(request).revoke_session(request.cookies.get(auth.SESSION_COOKIE, ""))
        response = _see_other("/console/login")
        auth.clear_cookie(response, request, _settings(request))
        return response

    return await _post(request, act)


# ---------------------------------------------------------------- flags
@router.get("/flags")
def flags_page(
    request: Request,
    q: str | None = None,
    kind: str | None = None,
    owner: str | None = None,
    tag: str | None = None,
    state: str | None = None,
    page: str | None = None,
) -> Response:
    def build(session: Session, principal: Principal) -> Response:
        for name, value in (("q", q), ("kind", kind), ("owner", owner), ("tag", tag)):
            if value is not None and len(value) > 200:
                raise ValidationError(f"{name} must be at most 200 characters", field=name)
        service = _service(request)
        envs = [e.name for e in service.list_environments(principal)]
        query = FlagFilter(kind or None, tag or None, False, q or None)
        if state and state not in STATE_WORDS:
            raise ValidationError(f"state must be one of {', '.join(STATE_WORDS)}", field="state")
        found = service.flags_page(
            principal,
            query,
            owner=owner or None,
            state=state or None,
            page=max(1, _int(page, "page", 1)),
            page_size=_settings(request).page_size,
        )
        g = Grid(found.items, found.total, found.page, found.pages)
        filters = {"q": q, "kind": kind, "owner": owner, "tag": tag, "state": state}
        base = urlencode({k: v for k, v in filters.items() if v})
        return _render(
            request,
            "flags.html",
            session,
            grid=g,
            envs=envs,
            filters=filters,
            base=base,
            kinds=[k.value for k in FlagKind],
            states=STATE_WORDS,
        )

    return _page(request, build)


def _applied(service: AdminService, principal: Principal, env: str, version: int) -> dict[str, Any]:
    """The kill landing: how many live processes of ``env`` applied ``version``; each
    lagging one named, with the token it reports under (``token_id``/``token_name``,
    as ``kill?wait=`` gives them; null when unknown or the principal cannot kill)."""
    live = service.clients(principal, env)
    lagging = [i for i in live if i["applied_version"] < version]
    owners = _owners(service, principal, [i["instance_id"] for i in lagging])
    return {
        "environment": env,
        "version": version,
        "applied": len(live) - len(lagging),
        "live": len(live),
        "lagging": [
            {
                "instance_id": i["instance_id"],
                "name": f"{i['app'] or 'sdk'}@{i['host']}:{i['pid']}",
                "applied_version": i["applied_version"],
                "token_id": owners.get(i["instance_id"], {}).get("token_id"),
                "token_name": owners.get(i["instance_id"], {}).get("token_name"),
            }
            for i in lagging
        ],
    }


def _owners(
    service: AdminService, principal: Principal, instance_ids: list[str]
) -> dict[str, dict[str, str | None]]:
    """``TelemetryStore.instance_tokens`` of the lagging instances, for a principal who
    may kill (the people ``kill?wait=`` tells); empty when telemetry is out of reach:
    naming the owners is a courtesy, the landing line still shows."""
    telemetry = service.telemetry
    if not instance_ids or telemetry is None or not principal.may(Operation.KILL):
        return {}
    try:
        return telemetry.instance_tokens(instance_ids)
    except FlagrailError as exc:
        log.warning("cannot read the owners of lagging instances: %s", exc)
        return {}


@router.get("/flags/{key}")
def flag_page(
    request: Request, key: str, kill: str | None = None, version: str | None = None
) -> Response:
    def build(session: Session, principal: Principal) -> Response:
        service = _service(request)
        view = service.get_flag(principal, key)
        envs = {e.name: e for e in service.list_environments(principal)}
        protected = _users(request).protected(envs)
        landing = None
        if kill and kill in envs:
            landing = _applied(service, principal, kill, _int(version, "version", 0))
        return _render(
            request,
            "flag.html",
            session,
            record=view.record,
            telemetry=view.telemetry or {},
            protected=protected,
            landing=landing,
        )

    return _page(request, build)


@router.get("/flags/{key}/applied")
def applied_json(request: Request, key: str, env: str, version: str) -> Response:
    """``{"applied", "live", "lagging"}`` for the kill page's live line (JSON)."""
    try:
        session = auth.current_session(request, _users(request))
        principal = Principal.from_user(session.user)
        service = _service(request)
        service.get_flag(principal, key)
        body = _applied(service, principal, env, _int(version, "version", 0))
    except FlagrailError as exc:
        return JSONResponse({"error": str(exc)}, status_code=status_for(exc))
    return JSONResponse(body)


def _preview(
    request: Request,
    session: Session,
    principal: Principal,
    key: str,
    env: str,
    form: dict[str, Any],
    status: int = 200,
    message: str | None = None,
) -> Response:
    """The diff of a state edit against the state as it is now, with the save form."""
    principal.allow(Operation.SET_STATE)
    principal.check_env(env)
    record = _service(request).get_flag(principal, key).record
    if env not in record.states:
        raise ValidationError(f"environment {env!r} is not visible here", field="environment")
    state = record.states[env]
    after = applied(state, parse_state_form(form))
    return _render(
        request,
        "preview.html",
        session,
        status,
        key=key,
        env=env,
        changes=diff(state_fields(state), after),
        after=after,
        version=state.version,
        protected=env in _users(request).protected([env]),
        message=message,
        reason=_text(form, "reason"),
    )


@router.post("/flags/{key}/environments/{env}/preview")
async def preview_state(request: Request, key: str, env: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        return _preview(request, session, principal, key, env, form)

    return await _post(request, act)


@router.post("/flags/{key}/environments/{env}")
async def apply_state(request: Request, key: str, env: str) -> Response:
    """Save a previewed change; in a protected environment only with its name typed
    into ``confirm`` (else the preview again, 422)."""

    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        principal.allow(Operation.SET_STATE)
        change = parse_state_form(form)
        if env in _users(request).protected([env]) and form.get("confirm") != env:
            message = f"{env} is protected: type its name to confirm the change"
            return _preview(request, session, principal, key, env, form, 422, message)
        command = SetState(
            key,
            env,
            change,
            reason=_text(form, "reason") or None,
            expected_version=_int(str(form.get("version", "")), "version", 0),
        )
        try:
            _service(request).set_state(principal, command, request_id=request.state.request_id)
        except ApprovalRequiredError as exc:
            return _held(exc)
        return _see_other(f"/console/flags/{quote(key, safe='')}#env-{quote(env, safe='')}")

    return await _post(request, act)


@router.post("/flags/{key}/environments/{env}/kill")
async def kill(request: Request, key: str, env: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        reason = _text(form, "reason")
        if not reason:
            raise ValidationError("a kill needs a reason", field="reason")
        service = _service(request)
        result = service.kill(
            principal, Kill(key, reason, (env,)), request_id=request.state.request_id
        )
        version = result.env_versions.get(env)
        if version is None:  # already killed: the environment as it is now
            known = {e.name: e.version for e in service.list_environments(principal)}
            version = known.get(env, 0)
        query = urlencode({"kill": env, "version": version})
        return _see_other(f"/console/flags/{quote(key, safe='')}?{query}#env-{quote(env, safe='')}")

    return await _post(request, act)


@router.post("/flags/{key}/environments/{env}/unkill")
async def unkill(request: Request, key: str, env: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        reason = _text(form, "reason")
        if not reason:
            raise ValidationError("lifting a kill needs a reason", field="reason")
        try:
            _service(request).unkill(
                principal, Kill(key, reason, (env,)), request_id=request.state.request_id
            )
        except ApprovalRequiredError as exc:
            return _held(exc)
        return _see_other(f"/console/flags/{quote(key, safe='')}#env-{quote(env, safe='')}")

    return await _post(request, act)


# ---------------------------------------------------------------- history
@router.get("/history")
def history_page(
    request: Request,
    flag: str | None = None,
    environment: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
) -> Response:
    def build(session: Session, principal: Principal) -> Response:
        query = history_filter(
            flag=flag or None,
            environment=environment or None,
            actor=actor or None,
            action=action or None,
            since=since or None,
            until=until or None,
            limit=50,
            cursor=cursor or None,
        )
        page = _service(request).history(principal, query)
        rows = [(entry, diff(entry.before, entry.after)) for entry in page.items]
        filters = {
            "flag": flag,
            "environment": environment,
            "actor": actor,
            "action": action,
            "since": since,
            "until": until,
        }
        base = urlencode({k: v for k, v in filters.items() if v})
        return _render(
            request,
            "history.html",
            session,
            rows=rows,
            next_cursor=page.next_cursor,
            filters=filters,
            base=base,
            actions=[a.value for a in Action],
        )

    return _page(request, build)


# ---------------------------------------------------------------- health
@router.get("/health")
def health_page(request: Request) -> Response:
    def build(session: Session, principal: Principal) -> Response:
        service = _service(request)
        envs = service.list_environments(principal)
        since = datetime.now(UTC) - HEALTH_WINDOW
        cache_flags = FlagFilter(None, None, False, ".cache.")
        layers = [
            r.flag.key
            for r in service.flags_page(principal, cache_flags, page_size=LAYERS_SHOWN).items
            if ".cache." in r.flag.key
        ]
        kills = service.history(
            principal,
            history_filter(action=Action.KILL.value, since="24h", limit=100),
        ).items
        panels = []
        for env in envs:
            instances = service.clients(principal, env.name)
            for i in instances:
                i["lagging"] = i["applied_version"] < env.version
            instances.sort(key=lambda i: (not i["lagging"], i["instance_id"]))
            rates = []
            for layer in layers:
                totals = service.counter_totals(principal, layer, env.name, since)
                minutes = HEALTH_WINDOW.total_seconds() / 60
                per_minute = {c: totals.get(c, 0.0) / minutes for c in LAYER_COUNTERS}
                # circuit_open: times the layer's circuit opened in the window.
                circuit = (
                    "no reports"
                    if not totals
                    else ("opened" if totals.get("circuit_open", 0.0) > 0 else "closed")
                )
                rates.append((layer, per_minute, circuit))
            guard = [k for k in kills if k.environment == env.name and k.actor.startswith("guard:")]
            panels.append(
                {"env": env, "instances": instances, "rates": rates, "guard_kills": guard}
            )
        return _render(
            request,
            "health.html",
            session,
            panels=panels,
            counters=LAYER_COUNTERS,
            since=since,
            now=datetime.now(UTC),
        )

    return _page(request, build)


# ---------------------------------------------------------------- plans
@router.get("/plans")
def plans_page(request: Request, flag: str | None = None) -> Response:
    def build(session: Session, principal: Principal) -> Response:
        service = _service(request)
        plans = service.list_plans(principal, flag) if flag else service.recent_plans(principal)
        return _render(request, "plans.html", session, flag=flag or "", plans=plans)

    return _page(request, build)


@router.post("/plans/{plan_id}/{move}")
async def move_plan(request: Request, plan_id: int, move: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        try:
            step = PlanMove(move)
        except ValueError as exc:
            raise ValidationError("move must be pause, resume, abort or advance", "move") from exc
        plan = _service(request).move_plan(
            principal,
            MovePlan(plan_id, step, _text(form, "reason") or None),
            request_id=request.state.request_id,
        )
        return _see_other(f"/console/plans?{urlencode({'flag': plan.flag})}")

    return await _post(request, act)


# ---------------------------------------------------------------- admin
@router.get("/admin")
def admin_page(request: Request) -> Response:
    def build(session: Session, principal: Principal) -> Response:
        return _admin(request, session, principal)

    return _page(request, build)


def _admin(
    request: Request,
    session: Session,
    principal: Principal,
    status: int = 200,
    **extra: Any,
) -> Response:
    principal.allow(Operation.MANAGE_TOKENS)
    service = _service(request)
    envs = service.list_environments(principal)
    users = _users(request)
    return _render(
        request,
        "admin.html",
        session,
        status,
        users=users.list_users() if principal.environments is None else [],
        tokens=service.list_tokens(principal),
        envs=envs,
        protected=users.protected(e.name for e in envs),
        roles=[r.value for r in Role],
        **extra,
    )


def _environments(form: dict[str, Any]) -> tuple[str, ...] | None:
    raw = _text(form, "environments")
    envs = tuple(sorted({p.strip() for p in raw.split(",") if p.strip()}))
    return envs or None


@router.post("/admin/tokens")
async def create_token(request: Request) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        info, value = _service(request).create_token(
            principal,
            CreateToken(
                _text(form, "name", 100),
                _text(form, "role", 20),
                _environments(form),
                user=_text(form, "user", 64) or None,
            ),
            request_id=request.state.request_id,
        )
        return _admin(request, session, principal, 201, new_token=(info, value))

    return await _post(request, act)


@router.post("/admin/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        _service(request).revoke_token(principal, token_id, request_id=request.state.request_id)
        return _see_other("/console/admin#tokens")

    return await _post(request, act)


@router.post("/admin/users")
async def create_user(request: Request) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        principal.allow(Operation.MANAGE_TOKENS)
        principal.check_unscoped("managing users")
        _users(request).create_user(
            _text(form, "name", 64),
            str(form.get("password", "")),
            _text(form, "role", 20),
            _environments(form),
            actor=principal.actor,
            request_id=request.state.request_id,
        )
        return _see_other("/console/admin#users")

    return await _post(request, act)


@router.post("/admin/users/{name}/disable")
async def disable_user(request: Request, name: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        principal.allow(Operation.MANAGE_TOKENS)
        principal.check_unscoped("managing users")
        if name == session.user.name:
            raise ForbiddenError("you cannot disable yourself", field="name")
        _users(request).set_disabled(
            name, True, actor=principal.actor, request_id=request.state.request_id
        )
        return _see_other("/console/admin#users")

    return await _post(request, act)


@router.post("/admin/users/{name}/enable")
async def enable_user(request: Request, name: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        principal.allow(Operation.MANAGE_TOKENS)
        principal.check_unscoped("managing users")
        _users(request).set_disabled(
            name, False, actor=principal.actor, request_id=request.state.request_id
        )
        return _see_other("/console/admin#users")

    return await _post(request, act)


@router.post("/admin/environments/{env}/protection")
async def protect(request: Request, env: str) -> Response:
    def act(session: Session, principal: Principal, form: dict[str, Any]) -> Response:
        principal.allow(Operation.CREATE_ENVIRONMENT)
        principal.check_unscoped("protecting an environment")
        _users(request).set_protected(env, form.get("protected") == "on")
        return _see_other("/console/admin#environments")

    return await _post(request, act)
