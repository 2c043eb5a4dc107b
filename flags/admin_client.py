"""``AdminClient``: the one Python client of the flagrail admin API.

The CLI, the plan and report commands, the cache ``Guard`` and the incident demo
all talk to a server through it. Each method is one request and returns the JSON
object the server answered (the shapes the admin API documents). It depends only
on httpx, the standard library and flagrail's pure modules, so the lean SDK
install has it.

Errors are ``flags.errors`` types, never httpx's:

* an error answer raises the class whose ``code`` the server named
  (``flag_not_found`` -> ``FlagNotFoundError``, ``version_conflict`` ->
  ``VersionConflictError`` with ``current``, ...), else the class of its status
  (404 ``NotFoundError``, 409 ``ConflictError``, 401 ``UnauthenticatedError``,
  403 ``ForbiddenError``, 429 and 5xx ``ServerUnavailableError``, other 4xx
  ``ValidationError``); the message reads ``"<status> <code>: <message>"`` and
  ``field`` is the server's;
* a server that cannot be reached, does not answer in time or answers something
  that is not the API raises ``ServerUnavailableError`` (a kill may or may not
  have been applied after a timeout: it is idempotent, so send it again);
* a malformed flag key or environment name raises ``ValidationError`` before
  anything is sent (no ``/`` or ``..`` ever reaches a URL).

What is worth retrying is a ``ConnectionError``: ``ServerUnavailableError`` and
``StoreUnavailableError`` (the server's database did not answer; nothing was written).

Thread-safe as an ``httpx.Client`` is. ``close()`` releases its connections; the
client is a context manager. Constructing it does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from flags import errors
from flags.model import VARIANT_NAME, validate_environment_name, validate_flag_key

__all__ = [
    "AdminApi",
    "AdminClient",
    "error_from_answer",
    "flag_body",
    "kill_body",
    "state_body",
    "token_body",
    "variant_path",
]

USER_AGENT = "flagrail-admin-client"


class AdminApi(Protocol):
    """The admin operations, as ``AdminClient`` offers them over HTTP and
    ``api.cli.database.DatabaseAdmin`` directly on a database. Each returns the
    admin API's JSON answer."""

    def list_environments(self) -> dict[str, Any]: ...
    def create_environment(self, name: str) -> dict[str, Any]: ...
    def list_flags(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
    ) -> dict[str, Any]: ...
    def create_flag(
        self,
        key: str,
        *,
        description: str = "",
        kind: str = "release",
        owner: str | None = None,
        tags: Sequence[str] = (),
        type: str | None = None,
        variants: Sequence[Mapping[str, Any]] | None = None,
        off_variant: str | None = None,
        on_variant: str | None = None,
    ) -> dict[str, Any]: ...
    def add_variant(self, key: str, name: str, value: Any) -> dict[str, Any]: ...
    def rename_variant(self, key: str, name: str, new_name: str) -> dict[str, Any]: ...
    def set_variant_value(self, key: str, name: str, value: Any) -> dict[str, Any]: ...
    def remove_variant(self, key: str, name: str) -> dict[str, Any]: ...
    def get_flag(self, key: str) -> dict[str, Any]: ...
    def update_flag(self, key: str, **changes: Any) -> dict[str, Any]: ...
    def archive_flag(self, key: str) -> dict[str, Any]: ...
    def set_state(
        self,
        env: str,
        flag: str,
        *,
        reason: str | None = None,
        if_version: int | None = None,
        break_glass: bool = False,
        **change: Any,
    ) -> dict[str, Any]: ...
    def kill(
        self,
        env: str | Sequence[str] | None,
        flag: str,
        *,
        reason: str,
        wait: str | None = None,
    ) -> dict[str, Any]: ...
    def unkill(
        self, env: str | Sequence[str] | None, flag: str, *, reason: str, break_glass: bool = False
    ) -> dict[str, Any]: ...
    def history(self, **filters: Any) -> dict[str, Any]: ...
    def create_token(
        self,
        name: str,
        role: str,
        environments: Sequence[str] | None = None,
        flags: Sequence[str] | None = None,
        user: str | None = None,
    ) -> dict[str, Any]: ...
    def list_tokens(self) -> dict[str, Any]: ...
    def revoke_token(self, token_id: str) -> dict[str, Any]: ...
    def create_plan(
        self, flag: str, plan: Mapping[str, Any], *, break_glass: str | None = None
    ) -> dict[str, Any]: ...
    def create_schedule(
        self, flag: str, schedule: Mapping[str, Any], *, break_glass: str | None = None
    ) -> dict[str, Any]: ...
    def list_plans(self, flag: str) -> dict[str, Any]: ...
    def get_plan(self, plan_id: int) -> dict[str, Any]: ...
    def pause_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]: ...
    def resume_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]: ...
    def abort_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]: ...
    def advance_plan(self, plan_id: int) -> dict[str, Any]: ...
    def unused(self, since: str = "30d") -> dict[str, Any]: ...
    def close(self) -> None: ...


def _all_errors(base: type[errors.FlagrailError]) -> Iterator[type[errors.FlagrailError]]:
    for cls in base.__subclasses__():
        yield cls
        yield from _all_errors(cls)


# The server's error codes are the ``code`` of the class it raised. Only classes that name a
# code of their own count: a subclass that inherits its parent's code (a server module's
# refinement) must not take the parent's code over, whatever was imported first.
BY_CODE: Mapping[str, type[errors.FlagrailError]] = {
    cls.code: cls for cls in _all_errors(errors.FlagrailError) if "code" in vars(cls)
}
BY_STATUS: Mapping[int, type[errors.FlagrailError]] = {
    401: errors.UnauthenticatedError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    429: errors.ServerUnavailableError,  # too many requests: try again later
}


def error_from_answer(status: int, body: object, fallback: str) -> errors.FlagrailError:
    """The ``flags.errors`` exception for an error answer (``{"error": {"code",
    "message", "field"}}``, a conflict adding ``"current"``); ``fallback`` is the
    message when the body is not that shape."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = str(error.get("code") or "error")
    message = str(error.get("message") or fallback)
    field = error.get("field") if isinstance(error.get("field"), str) else None
    cls = BY_CODE.get(code) or BY_STATUS.get(status)
    if cls is None:
        cls = errors.ServerUnavailableError if status >= 500 else errors.ValidationError
    text = f"{status} {code}: {message}"
    if issubclass(cls, errors.VersionConflictError):
        current = body.get("current") if isinstance(body, dict) else None
        return cls(text, current=current if isinstance(current, dict) else {}, field=field)
    return cls(text, field=field)


# ------------------------------------------------------------ request bodies
# The JSON bodies of the admin API, built once: ``AdminClient`` sends them and
# ``DatabaseAdmin`` parses them with the server's own request models.
def flag_body(
    key: str,
    *,
    description: str,
    kind: str,
    owner: str | None,
    tags: Sequence[str],
    type: str | None = None,
    variants: Sequence[Mapping[str, Any]] | None = None,
    off_variant: str | None = None,
    on_variant: str | None = None,
) -> dict[str, Any]:
    """``POST /admin/flags`` (the typed-flag fields only when given)."""
    body: dict[str, Any] = {"key": key, "description": description, "kind": kind}
    body["tags"] = list(tags)
    if owner is not None:
        body["owner"] = owner
    typed = {"type": type, "off_variant": off_variant, "on_variant": on_variant}
    body.update({name: value for name, value in typed.items() if value is not None})
    if variants is not None:
        body["variants"] = [dict(v) for v in variants]
    return body


def variant_path(key: str, name: str | None = None) -> str:
    """``/admin/flags/{key}/variants[/{name}]``; a name that is not a valid variant name
    raises ``ValidationError`` (field ``name``) before anything is sent."""
    if name is None:
        return _flag_path(key, "variants")
    if not isinstance(name, str) or not VARIANT_NAME.fullmatch(name):
        raise errors.ValidationError(
            f"name must match {VARIANT_NAME.pattern}, got {name!r:.60}", field="name"
        )
    return _flag_path(key, "variants", quote(name, safe=""))


def state_body(change: Mapping[str, Any], reason: str | None) -> dict[str, Any]:
    """``PATCH /admin/flags/{key}/environments/{env}``."""
    body = dict(change)
    if reason is not None:
        body["reason"] = reason
    return body


def kill_body(env: str | Sequence[str] | None, reason: str) -> dict[str, Any]:
    """``POST .../kill`` and ``.../unkill``: ``env`` is one environment name, several,
    or None (every environment of the token); names are validated here."""
    if env is None:
        envs = None
    else:
        names = [env] if isinstance(env, str) else list(env)
        envs = [validate_environment_name(name, "environments") for name in names]
    return {"reason": reason, "environments": envs}


def token_body(
    name: str,
    role: str,
    environments: Sequence[str] | None,
    flags: Sequence[str] | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """``POST /admin/tokens`` (``flags`` only when given: fnmatch patterns of flag keys;
    ``user`` only when given: the console user the token is issued to)."""
    envs = None if environments is None else list(environments)
    body: dict[str, Any] = {"name": name, "role": role, "environments": envs}
    if flags is not None:
        body["flags"] = list(flags)
    if user is not None:
        body["user"] = user
    return body


def _glass(reason: str | None) -> dict[str, Any] | None:
    """The query of a break-glass plan or schedule (#16), None without one."""
    return None if reason is None else {"break_glass": "true", "reason": reason}


def _flag_path(key: str, *rest: str) -> str:
    return "/".join(["/admin/flags", quote(validate_flag_key(key), safe=""), *rest])


def _plan_path(plan_id: int, action: str | None = None) -> str:
    if isinstance(plan_id, bool) or not isinstance(plan_id, int) or plan_id < 1:
        raise errors.ValidationError(f"plan id must be a positive integer, got {plan_id!r}")
    return f"/admin/plans/{plan_id}" + (f"/{action}" if action else "")


class AdminClient:
    """The admin API at ``url`` (like ``http://127.0.0.1:8000``), authenticated with
    ``token``. ``actor`` names an automated caller (``guard:<host>:<pid>``; sent as
    ``X-Flagrail-Actor``). ``transport`` replaces httpx's (tests, ASGI apps)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        actor: str | None = None,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}", "User-Agent": user_agent}
        if actor is not None:
            headers["X-Flagrail-Actor"] = actor
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request to ``path``; the answer's JSON object. ``None`` params are left
        out. Raises as the module docstring says."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(
                method, path, json=json, params=query, headers=dict(headers or {})
            )
        except httpx.ConnectError as exc:
            raise errors.ServerUnavailableError(
                f"cannot connect to the flagrail server at {self.url} ({exc})"
            ) from exc
        except httpx.TimeoutException as exc:
            raise errors.ServerUnavailableError(
                f"the flagrail server at {self.url} did not answer in time"
            ) from exc
        except httpx.HTTPError as exc:
            raise errors.ServerUnavailableError(f"request to {self.url} failed: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            text = response.text.strip().replace("\n", " ")[:200]
            raise error_from_answer(response.status_code, data, text or response.reason_phrase)
        if (
            response.status_code == 202
            and isinstance(data, dict)
            and data.get("status") == "pending"
        ):
            # Held for approval (#16): not applied, so never returned as if it were.
            raise errors.ApprovalRequiredError.from_body(data)
        if not isinstance(data, dict):
            raise errors.ServerUnavailableError(
                f"{self.url}{path} answered {response.status_code} without a JSON object; "
                "is it a flagrail server?"
            )
        return data

    # ------------------------------------------------------------ environments
    def list_environments(self) -> dict[str, Any]:
        return self.request("GET", "/admin/environments")

    def create_environment(self, name: str) -> dict[str, Any]:
        return self.request("POST", "/admin/environments", json={"name": name})

    # ------------------------------------------------------------ flags
    def list_flags(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
    ) -> dict[str, Any]:
        flag_filter = None if archived is None else str(archived).lower()
        params = {"kind": kind, "tag": tag, "archived": flag_filter, "q": q}
        return self.request("GET", "/admin/flags", params=params)

    def create_flag(
        self,
        key: str,
        *,
        description: str = "",
        kind: str = "release",
        owner: str | None = None,
        tags: Sequence[str] = (),
        type: str | None = None,
        variants: Sequence[Mapping[str, Any]] | None = None,
        off_variant: str | None = None,
        on_variant: str | None = None,
    ) -> dict[str, Any]:
        """A new flag; a typed one (``type`` string, number or json) with its
        ``variants`` (``{"name", "value"}`` each) and ``off_variant`` (the safe value)."""
        body = flag_body(
            key,
            description=description,
            kind=kind,
            owner=owner,
            tags=tags,
            type=type,
            variants=variants,
            off_variant=off_variant,
            on_variant=on_variant,
        )
        return self.request("POST", "/admin/flags", json=body)

    def add_variant(self, key: str, name: str, value: Any) -> dict[str, Any]:
        """Declare variant ``name`` serving ``value`` on a typed flag; answers the flag."""
        body = {"name": name, "value": value}
        return self.request("POST", variant_path(key), json=body)

    def rename_variant(self, key: str, name: str, new_name: str) -> dict[str, Any]:
        """Rename a variant everywhere it is used; answers the flag."""
        return self.request("PATCH", variant_path(key, name), json={"name": new_name})

    def set_variant_value(self, key: str, name: str, value: Any) -> dict[str, Any]:
        """Change the value a variant serves; answers the flag."""
        return self.request("PATCH", variant_path(key, name), json={"value": value})

    def remove_variant(self, key: str, name: str) -> dict[str, Any]:
        """Remove a variant no environment serves (else ``ConflictError`` naming where)."""
        return self.request("DELETE", variant_path(key, name))

    def get_flag(self, key: str) -> dict[str, Any]:
        return self.request("GET", _flag_path(key))

    def update_flag(self, key: str, **changes: Any) -> dict[str, Any]:
        """Change any of ``description``, ``owner``, ``tags``, ``kind``."""
        return self.request("PATCH", _flag_path(key), json=changes)

    def archive_flag(self, key: str) -> dict[str, Any]:
        return self.request("DELETE", _flag_path(key))

    # ------------------------------------------------------------ states and kills
    def set_state(
        self,
        env: str,
        flag: str,
        *,
        reason: str | None = None,
        if_version: int | None = None,
        break_glass: bool = False,
        **change: Any,
    ) -> dict[str, Any]:
        """Change ``flag`` in ``env``: ``change`` holds the body fields of
        ``PATCH .../environments/{env}`` (``enabled``, ``rollout``, ``tenants_on``,
        ``tenants_on_add``, ...). ``if_version`` makes it conditional."""
        headers = {"If-Match": f'"{if_version}"'} if if_version is not None else None
        path = _flag_path(flag, "environments", validate_environment_name(env, "env"))
        params = {"break_glass": "true"} if break_glass else None
        return self.request(
            "PATCH", path, json=state_body(change, reason), headers=headers, params=params
        )

    def kill(
        self,
        env: str | Sequence[str] | None,
        flag: str,
        *,
        reason: str,
        wait: str | None = None,
    ) -> dict[str, Any]:
        """Kill ``flag`` in ``env`` (one name, several, or None: every environment of
        the token). ``wait`` (like ``"2s"``) waits for SDKs to confirm."""
        body = kill_body(env, reason)
        return self.request("POST", _flag_path(flag, "kill"), json=body, params={"wait": wait})

    def unkill(
        self, env: str | Sequence[str] | None, flag: str, *, reason: str, break_glass: bool = False
    ) -> dict[str, Any]:
        """Lift a kill; the mirror of ``kill``."""
        params = {"break_glass": "true"} if break_glass else None
        return self.request(
            "POST", _flag_path(flag, "unkill"), json=kill_body(env, reason), params=params
        )

    def history(self, **filters: Any) -> dict[str, Any]:
        """One page of history: ``flag`` (an unknown flag is an error), ``environment``,
        ``actor``, ``action``, ``since``, ``until``, ``limit``, ``cursor``."""
        params = dict(filters)
        flag = params.pop("flag", None)
        path = "/admin/history" if flag is None else _flag_path(flag, "history")
        return self.request("GET", path, params=params)

    # ------------------------------------------------------------ tokens
    def create_token(
        self,
        name: str,
        role: str,
        environments: Sequence[str] | None = None,
        flags: Sequence[str] | None = None,
        user: str | None = None,
    ) -> dict[str, Any]:
        """A new token; the answer's ``token`` is its value, shown this once. ``flags``
        limits it to flag keys matching those fnmatch patterns; ``user`` issues it to
        that console user."""
        body = token_body(name, role, environments, flags, user)
        return self.request("POST", "/admin/tokens", json=body)

    def list_tokens(self) -> dict[str, Any]:
        return self.request("GET", "/admin/tokens")

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self.request("DELETE", f"/admin/tokens/{quote(token_id, safe='')}")

    # ------------------------------------------------------------ plans
    def create_plan(
        self, flag: str, plan: Mapping[str, Any], *, break_glass: str | None = None
    ) -> dict[str, Any]:
        """``break_glass`` (the reason): an admin creates it at once in a gated
        environment (#16)."""
        params = _glass(break_glass)
        return self.request("POST", _flag_path(flag, "plans"), json=plan, params=params)

    def create_schedule(
        self, flag: str, schedule: Mapping[str, Any], *, break_glass: str | None = None
    ) -> dict[str, Any]:
        params = _glass(break_glass)
        return self.request("POST", _flag_path(flag, "schedules"), json=schedule, params=params)

    def list_plans(self, flag: str) -> dict[str, Any]:
        return self.request("GET", _flag_path(flag, "plans"))

    def get_plan(self, plan_id: int) -> dict[str, Any]:
        return self.request("GET", _plan_path(plan_id))

    def pause_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]:
        return self._plan_action(plan_id, "pause", reason)

    def resume_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]:
        return self._plan_action(plan_id, "resume", reason)

    def abort_plan(self, plan_id: int, *, reason: str | None = None) -> dict[str, Any]:
        return self._plan_action(plan_id, "abort", reason)

    def advance_plan(self, plan_id: int) -> dict[str, Any]:
        return self._plan_action(plan_id, "advance", None)

    def _plan_action(self, plan_id: int, action: str, reason: str | None) -> dict[str, Any]:
        body = {"reason": reason} if reason is not None else None
        return self.request("POST", _plan_path(plan_id, action), json=body)

    # ------------------------------------------------------------ reports
    def unused(self, since: str = "30d") -> dict[str, Any]:
        """Flags no SDK evaluated since ``since`` (a duration or an ISO-8601 time)."""
        return self.request("GET", "/admin/reports/unused", params={"since": since})

    def clients(self, env: str) -> dict[str, Any]:
        """Live SDK instances of ``env``."""
        path = f"/admin/environments/{validate_environment_name(env, 'env')}/clients"
        return self.request("GET", path)
