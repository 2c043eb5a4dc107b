"""Where the CLI's flag commands send their work: a running server, or the database itself.

``Backend`` is the seam. ``HttpBackend`` talks to the admin API over HTTP (the
normal path); ``DatabaseBackend`` works directly on the database through
``SqlFlagStore`` (break-glass, when the server is down), validating input with the
API's own request models and recording history under ``cli:<os user>``. Both return
the JSON shapes the admin API answers with, so ``--json`` output does not depend
on the path taken.

Errors: ``HttpBackend`` turns an error answer into a ``CliError`` carrying the
server's message, and an unreachable server into a ``CliError`` naming the URL;
``DatabaseBackend`` raises ``flags.errors`` types. The CLI prints either as one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from api.cli.output import CliError
from api.schemas import (
    EnvironmentCreate,
    FlagCreate,
    KillRequest,
    StateUpdate,
    environment_json,
    flag_json,
    kill_json,
)
from flags.durations import parse_instant
from flags.errors import ValidationError
from flags.history import HistoryQuery
from flags.model import validate_environment_name, validate_flag_key
from flags.store.sql import SqlFlagStore, cli_actor

__all__ = ["Backend", "DatabaseBackend", "HistoryFilters", "HttpBackend"]

HistoryFilters = Mapping[str, Any]
"""``flag``, ``environment``, ``since``, ``until``, ``action``, ``actor``, ``limit``, ``cursor``;
a missing or None entry is no filter."""


class Backend(Protocol):
    """The operations behind ``flagrail flags|set|kill|unkill|history|env``.

    Each returns the JSON the admin API answers with. ``close()`` releases
    connections; a backend is a context manager.
    """

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
    def create_flag(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def get_flag(self, key: str) -> dict[str, Any]: ...
    def archive_flag(self, key: str) -> dict[str, Any]: ...
    def update_state(
        self, key: str, env: str, body: dict[str, Any], *, if_version: int | None = None
    ) -> dict[str, Any]: ...
    def kill(
        self, key: str, body: dict[str, Any], *, wait: str | None = None
    ) -> dict[str, Any]: ...
    def unkill(self, key: str, body: dict[str, Any]) -> dict[str, Any]: ...
    def history(self, filters: HistoryFilters) -> dict[str, Any]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Backend: ...
    def __exit__(self, *exc: object) -> None: ...


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


class HttpBackend:
    """The admin API at ``url``, authenticated with ``token``. Thread-safe as httpx is."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "flagrail-cli"},
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request; raises ``CliError`` for an error answer or an unreachable server."""
        try:
            response = self._client.request(
                method,
                path,
                json=json,
                params=_drop_none(params or {}),
                headers=dict(headers or {}),
            )
        except httpx.ConnectError as exc:
            raise CliError(
                f"cannot connect to the flagrail server at {self.url} ({exc}); is it running? "
                "For break-glass changes while it is down, pass --database-url instead"
            ) from exc
        except httpx.TimeoutException as exc:
            raise CliError(f"the flagrail server at {self.url} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise CliError(_error_message(response))
        try:
            data = response.json()
        except ValueError as exc:
            raise CliError(
                f"{self.url}{path} answered {response.status_code} with a body that is not JSON"
            ) from exc
        if not isinstance(data, dict):
            raise CliError(f"{self.url}{path} answered with unexpected JSON")
        return data

    def list_environments(self) -> dict[str, Any]:
        return self._call("GET", "/admin/environments")

    def create_environment(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/admin/environments", json={"name": name})

    def list_flags(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
    ) -> dict[str, Any]:
        params = {
            "kind": kind,
            "tag": tag,
            "archived": None if archived is None else str(archived).lower(),
            "q": q,
        }
        return self._call("GET", "/admin/flags", params=params)

    def create_flag(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/admin/flags", json=body)

    # Path segments are validated before they go into a URL: no "/" or ".." reaches it.
    def get_flag(self, key: str) -> dict[str, Any]:
        return self._call("GET", f"/admin/flags/{validate_flag_key(key)}")

    def archive_flag(self, key: str) -> dict[str, Any]:
        return self._call("DELETE", f"/admin/flags/{validate_flag_key(key)}")

    def update_state(
        self, key: str, env: str, body: dict[str, Any], *, if_version: int | None = None
    ) -> dict[str, Any]:
        headers = {"If-Match": f'"{if_version}"'} if if_version is not None else None
        env = validate_environment_name(env, "env")
        path = f"/admin/flags/{validate_flag_key(key)}/environments/{env}"
        return self._call("PATCH", path, json=body, headers=headers)

    def kill(self, key: str, body: dict[str, Any], *, wait: str | None = None) -> dict[str, Any]:
        path = f"/admin/flags/{validate_flag_key(key)}/kill"
        return self._call("POST", path, json=body, params={"wait": wait})

    def unkill(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/admin/flags/{validate_flag_key(key)}/unkill", json=body)

    def history(self, filters: HistoryFilters) -> dict[str, Any]:
        params = dict(filters)
        flag = params.pop("flag", None)
        if flag is not None:
            return self._call(
                "GET", f"/admin/flags/{validate_flag_key(flag)}/history", params=params
            )
        return self._call("GET", "/admin/history", params=params)


def _error_message(response: httpx.Response) -> str:
    """The server's error message, prefixed with the status and the error code."""
    try:
        body = response.json()
        error = body["error"]
        message = str(error["message"])
        code = str(error.get("code") or "error")
    except (ValueError, KeyError, TypeError):
        text = response.text.strip().replace("\n", " ")[:200]
        return f"HTTP {response.status_code}: {text or response.reason_phrase}"
    return f"{response.status_code} {code}: {message}"


def _parse(model: type[BaseModel], body: Mapping[str, Any]) -> Any:
    """Validate ``body`` with an API request model; errors become ``ValidationError``."""
    try:
        return model.model_validate(dict(body))
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        raise ValidationError(f"{field}: {first.get('msg')}", field=field) from exc


class DatabaseBackend:
    """The database at ``url``, through ``SqlFlagStore`` (break-glass mode).

    Changes are recorded in the history under ``actor`` (default ``cli:<os user>``)
    in the same transaction as the change, exactly as the API records them. The
    schema must be current: raises ``SchemaOutdatedError`` naming ``flagrail db
    upgrade`` otherwise. SDKs connected to a server learn of these changes on their
    next poll, not by push.
    """

    def __init__(self, url: str, *, actor: str | None = None) -> None:
        self.store = SqlFlagStore(url)
        self.actor = actor or cli_actor()
        self._checked = False

    def __enter__(self) -> DatabaseBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def _ready(self) -> SqlFlagStore:
        if not self._checked:
            from flags.store.schema import check_schema

            check_schema(self.store.engine)
            self._checked = True
        return self.store

    def list_environments(self) -> dict[str, Any]:
        return {"items": [environment_json(e) for e in self._ready().list_environments()]}

    def create_environment(self, name: str) -> dict[str, Any]:
        body = _parse(EnvironmentCreate, {"name": name})
        return environment_json(self._ready().create_environment(body.name, actor=self.actor))

    def list_flags(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
    ) -> dict[str, Any]:
        records = self._ready().list_flags(kind=kind, tag=tag, archived=archived, q=q)
        return {"items": [flag_json(r) for r in records]}

    def create_flag(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = _parse(FlagCreate, body)
        validate_flag_key(spec.key)
        store = self._ready()
        store.create_flag(
            spec.key,
            description=spec.description,
            kind=spec.kind,
            owner=spec.owner,
            tags=spec.tags,
            actor=self.actor,
        )
        return flag_json(store.get_flag(spec.key))

    def get_flag(self, key: str) -> dict[str, Any]:
        validate_flag_key(key)
        return flag_json(self._ready().get_flag(key))

    def archive_flag(self, key: str) -> dict[str, Any]:
        validate_flag_key(key)
        store = self._ready()
        store.archive_flag(key, actor=self.actor)
        return flag_json(store.get_flag(key))

    def update_state(
        self, key: str, env: str, body: dict[str, Any], *, if_version: int | None = None
    ) -> dict[str, Any]:
        validate_flag_key(key)
        validate_environment_name(env)
        spec = _parse(StateUpdate, body)
        state = self._ready().update_state(
            key,
            env,
            spec.to_change(),
            actor=self.actor,
            expected_version=if_version,
            reason=spec.reason,
        )
        return {"flag": key, "environment": env, **state.to_dict()}

    def kill(self, key: str, body: dict[str, Any], *, wait: str | None = None) -> dict[str, Any]:
        """``wait`` is ignored: with no server there are no SDK acknowledgements to await."""
        return self._set_killed(key, body, kill=True)

    def unkill(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._set_killed(key, body, kill=False)

    def _set_killed(self, key: str, body: dict[str, Any], *, kill: bool) -> dict[str, Any]:
        validate_flag_key(key)
        spec = _parse(KillRequest, body)
        for env in spec.environments or ():
            validate_environment_name(env, "environments")
        store = self._ready()
        operation = store.kill if kill else store.unkill
        result = operation(key, spec.environments, reason=spec.reason, actor=self.actor)
        return kill_json(result)

    def history(self, filters: HistoryFilters) -> dict[str, Any]:
        flag = filters.get("flag")
        store = self._ready()
        if flag is not None:
            validate_flag_key(flag)
            store.get_flag(flag)  # an unknown flag is an error, as in the API
        since, until = filters.get("since"), filters.get("until")
        query = HistoryQuery(
            flag=flag,
            environment=filters.get("environment"),
            actor=filters.get("actor"),
            action=filters.get("action"),
            since=parse_instant(since, "since") if since else None,
            until=parse_instant(until, "until") if until else None,
            limit=filters.get("limit") or 100,
            cursor=filters.get("cursor"),
        )
        return store.list_history(query).to_dict()
