"""``GET /sdk/v1/snapshot`` with ETags: the SDK's full-snapshot fetch and its fallback sync.

The ETag is the environment version, quoted; ``If-None-Match`` makes an
unchanged snapshot a bodiless 304, so polling every few seconds costs one tiny
request. HTTP failures are translated here into flagrail errors.
"""

from __future__ import annotations

from typing import Any

import httpx

from flags.errors import (
    EnvironmentNotFoundError,
    ForbiddenError,
    StoreUnavailableError,
    UnauthenticatedError,
    ValidationError,
)
from flags.model import Snapshot

__all__ = ["SnapshotFetcher", "auth_headers"]


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class SnapshotFetcher:
    """Fetch one environment's snapshot. Thread-safe if ``http`` is (httpx.Client is)."""

    def __init__(self, http: httpx.Client, url: str, token: str | None, environment: str) -> None:
        self.http = http
        self.url = f"{url.rstrip('/')}/sdk/v1/snapshot"
        self.headers = auth_headers(token)
        self.environment = environment
        # What the server said in X-Flagrail-Publishes on its last answer, e.g.
        # "redis flagrail:" (None: it publishes nowhere, or never answered).
        self.publishes: str | None = None
        # The environment's change-message verify key from X-Flagrail-Verify-Key (hex),
        # when the server signs its Redis messages (None: hint-only).
        self.verify_key: bytes | None = None

    def fetch(
        self, known_version: int | None = None, *, min_version: int | None = None
    ) -> Snapshot | None:
        """The snapshot, or None when it is still at ``known_version`` (304).
        ``min_version``: a version a hint announced; a server replica that does not
        know it yet answers from its database rather than from memory.

        Raises ``StoreUnavailableError`` (server unreachable, timed out or 5xx),
        ``UnauthenticatedError`` / ``ForbiddenError`` (401/403),
        ``EnvironmentNotFoundError`` (404) and ``ValidationError`` (a body that is
        not a snapshot of this environment).
        """
        headers = dict(self.headers)
        if known_version is not None:
            headers["If-None-Match"] = f'"{known_version}"'
        try:
            params: dict[str, str | int] = {"environment": self.environment}
            if min_version is not None:
                params["min_version"] = min_version
            response = self.http.get(self.url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise StoreUnavailableError(
                f"flagrail server unreachable: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code < 400:
            self.publishes = response.headers.get("x-flagrail-publishes")
            self.verify_key = _hex_key(response.headers.get("x-flagrail-verify-key"))
        if response.status_code == 304:
            return None
        raise_for_status(response)
        try:
            body: Any = response.json()
        except ValueError as exc:
            raise ValidationError("snapshot body is not JSON", field="snapshot") from exc
        snapshot = Snapshot.from_dict(body)
        if snapshot.environment != self.environment:
            raise ValidationError(
                f"asked for {self.environment!r}, got {snapshot.environment!r}",
                field="environment",
            )
        return snapshot


def _hex_key(value: str | None) -> bytes | None:
    if not value:
        return None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        return None
    return key if len(key) >= 16 else None


def raise_for_status(response: httpx.Response) -> None:
    """Translate an HTTP error status into the flagrail error it stands for."""
    status = response.status_code
    if status < 400:
        return
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    if status == 401:
        raise UnauthenticatedError(message, field="Authorization")
    if status == 403:
        raise ForbiddenError(message, field="environment")
    if status == 404:
        raise EnvironmentNotFoundError(message, field="environment")
    if status in (400, 413, 422):
        raise ValidationError(message)
    raise StoreUnavailableError(f"flagrail server answered {status}: {message}")
