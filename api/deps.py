"""FastAPI dependencies: the store, the request id, and the authenticated principal.

Role order: reader < operator < editor < admin. A ``client`` token reads only the
SDK endpoints of its environments. Environment scope is checked per route with
``Principal.check_env``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fastapi import Depends, Request

from flags.errors import ForbiddenError, UnauthenticatedError, ValidationError
from flags.model import Role, TokenInfo
from flags.store.sql import SqlFlagStore

RANK = {Role.CLIENT: 0, Role.READER: 1, Role.OPERATOR: 2, Role.EDITOR: 3, Role.ADMIN: 4}
ACTOR_HEADER = "x-flagrail-actor"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token, and the actor name its changes are recorded under."""

    token: TokenInfo
    actor: str

    @property
    def scope(self) -> tuple[str, ...] | None:
        return self.token.environments

    def check_env(self, environment: str) -> None:
        """Raise ``ForbiddenError`` unless the token covers ``environment``."""
        if not self.token.covers(environment):
            raise ForbiddenError(
                f"token {self.token.name!r} is not scoped to environment {environment!r}",
                field="environment",
            )

    def check_envs(self, environments: Sequence[str]) -> None:
        for env in environments:
            self.check_env(env)

    def check_unscoped(self, what: str) -> None:
        if self.token.environments is not None:
            raise ForbiddenError(f"{what} needs a token scoped to every environment")

    def visible(self, environments: Sequence[str]) -> list[str]:
        return [env for env in environments if self.token.covers(env)]


def get_store(request: Request) -> SqlFlagStore:
    return request.app.state.store  # type: ignore[no-any-return]


def request_id(request: Request) -> str:
    return request.state.request_id  # type: ignore[no-any-return]


def bearer_secret(request: Request, *, allow_raw: bool = False) -> str:
    """The token in ``Authorization``; ``allow_raw`` also takes it without ``Bearer``
    (as Unleash SDKs send it). Raises ``UnauthenticatedError``."""
    header = request.headers.get("authorization")
    if not header:
        raise UnauthenticatedError("missing Authorization header", field="Authorization")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if allow_raw and " " not in header.strip():
        return header.strip()
    raise UnauthenticatedError("Authorization must be 'Bearer <token>'", field="Authorization")


def _actor_for(request: Request, token: TokenInfo) -> str:
    claimed = request.headers.get(ACTOR_HEADER)
    if claimed is None:
        return token.name
    # Automated actors name themselves (guard:<host>:<pid>); nothing else may be claimed.
    if not claimed.startswith("guard:") or len(claimed) > 200 or not claimed.isprintable():
        raise ValidationError(
            "X-Flagrail-Actor must be 'guard:<host>:<pid>' (at most 200 characters)",
            field="X-Flagrail-Actor",
        )
    return claimed


def authenticate(request: Request, *, allow_raw: bool = False) -> TokenInfo:
    secret = bearer_secret(request, allow_raw=allow_raw)
    token = get_store(request).authenticate(secret)
    if token is None:
        raise UnauthenticatedError("unknown or revoked token", field="Authorization")
    return token


def require(role: Role) -> Callable[[Request], Principal]:
    """A dependency that authenticates and demands at least ``role`` (never ``client``)."""

    def dependency(request: Request) -> Principal:
        token = authenticate(request)
        if token.role is Role.CLIENT or RANK[token.role] < RANK[role]:
            raise ForbiddenError(
                f"token {token.name!r} has role {token.role.value!r}; "
                f"this needs {role.value!r} or above"
            )
        principal = Principal(token, _actor_for(request, token))
        request.state.principal = principal
        return principal

    return dependency


def require_client(request: Request) -> Principal:
    """SDK endpoints: any token (``client`` included); scope is checked by the route."""
    token = authenticate(request)
    return Principal(token, token.name)


Reader = Depends(require(Role.READER))
Operator = Depends(require(Role.OPERATOR))
Editor = Depends(require(Role.EDITOR))
Admin = Depends(require(Role.ADMIN))
SdkClient = Depends(require_client)
