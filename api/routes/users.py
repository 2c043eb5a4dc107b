"""``/admin/users``: console users (create, list, disable, enable), for unscoped admins.

A user has a role and environment scopes exactly like a token's; the password is
hashed with argon2id and never returned. The store is the console's ``UserStore``
(``app.state.console_users``); each change writes its history row (``user.create``,
``user.disable``, ``user.enable``) in its own transaction, by the calling token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import Principal, allowed, request_id
from api.schemas import NO_NUL
from api.service import Operation
from flags.store.users import User, UserStore

router = APIRouter(prefix="/admin/users", tags=["users"])
ManageUsers = Depends(allowed(Operation.MANAGE_TOKENS))


class UserCreate(BaseModel):
    """``POST /admin/users``: bad values are 422 naming the field."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, pattern=NO_NUL)
    password: str = Field(max_length=1024, pattern=NO_NUL)
    role: str = Field(max_length=20, pattern=NO_NUL)
    environments: list[Annotated[str, Field(max_length=40)]] | None = Field(
        default=None, max_length=100
    )


def user_json(user: User) -> dict[str, Any]:
    return user.to_dict()


def _users(request: Request, principal: Principal) -> UserStore:
    principal.check_unscoped("managing users")
    return request.app.state.console_users  # type: ignore[no-any-return]


@router.post("", status_code=201)
def create_user(
    body: UserCreate, request: Request, principal: Principal = ManageUsers
) -> dict[str, Any]:
    users = _users(request, principal)
    user = users.create_user(
        body.name,
        body.password,
        body.role,
        body.environments,
        actor=principal.actor,
        request_id=request_id(request),
    )
    return user_json(user)


@router.get("")
def list_users(request: Request, principal: Principal = ManageUsers) -> dict[str, Any]:
    return {"items": [user_json(u) for u in _users(request, principal).list_users()]}


@router.post("/{name}/disable")
def disable_user(
    name: Annotated[str, Path(max_length=64, pattern=NO_NUL)],
    request: Request,
    principal: Principal = ManageUsers,
) -> dict[str, Any]:
    """Disable a user: their sessions end and their tokens stop at once. Raises 404 for
    an unknown user."""
    users = _users(request, principal)
    return user_json(
        users.set_disabled(name, True, actor=principal.actor, request_id=request_id(request))
    )


@router.post("/{name}/enable")
def enable_user(
    name: Annotated[str, Path(max_length=64, pattern=NO_NUL)],
    request: Request,
    principal: Principal = ManageUsers,
) -> dict[str, Any]:
    """Enable a disabled user again (their tokens work again; sessions stay ended).
    Raises 404 for an unknown user."""
    users = _users(request, principal)
    return user_json(
        users.set_disabled(name, False, actor=principal.actor, request_id=request_id(request))
    )
