"""Who calls an admin operation, and what each role may do: the one permission table.

A ``Principal`` is made once per call: from the API token of an HTTP request
(``Principal.from_token``), from a console user's session (``Principal.from_user``),
or for the CLI's break-glass database mode (``Principal.break_glass``).
``AdminService`` checks it on every operation with ``Principal.allow``; the HTTP
routes call the same check early, so a caller without the role hears 403 before its
body is judged.

Roles: ``reader`` < ``operator`` < ``editor`` < ``admin``, each with the rights of
the one before; a ``client`` token reaches no admin operation. A ``guard`` token
(what an automated kill switch such as ``flags.cache.Guard`` holds) may kill and
nothing else: no unkill, no state change, no plan, no read. A token scoped to
some environments acts only within them (``check_env``); some operations need a
token for every environment (``check_unscoped``); a token with flag patterns acts
only on matching flags (``check_flag``).

Actors: every change records the token behind it (``Principal.actor``), or for a
console user ``user:<name>``. ``Principal.user`` names the person behind the call:
the console user, or the user a token was issued to (``flagrail token create
--user``). Only a ``guard`` token may name an actor of its own (``X-Flagrail-Actor:
guard:<host>:<pid>``, ``CLAIMS_ACTOR``); the history keeps that claim beside the
token's id and name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from flags.errors import ForbiddenError
from flags.history import Actor
from flags.model import Role, TokenInfo

if TYPE_CHECKING:
    from flags.store.users import User

__all__ = ["CLAIMS_ACTOR", "PERMISSIONS", "Operation", "Principal", "at_least"]

# The linear order of the admin roles; ``client`` stands apart (SDK endpoints only).
LADDER = (Role.READER, Role.OPERATOR, Role.EDITOR, Role.ADMIN)


class Operation(StrEnum):
    """Every admin operation, by the right it needs."""

    READ = "read"  # flags, states, environments, history, plans, reports, SDK instances
    EDIT_FLAG = "edit_flag"  # create, update, archive a flag
    SET_STATE = "set_state"
    KILL = "kill"
    UNKILL = "unkill"
    PLAN = "plan"  # create plans and schedules, resume, advance: moves a rollout forward
    STOP_PLAN = "stop_plan"  # pause, abort: only stops things
    CREATE_ENVIRONMENT = "create_environment"
    MANAGE_TOKENS = "manage_tokens"
    READ_TOKEN_HISTORY = "read_token_history"  # history rows of token changes
    MANAGE_WEBHOOKS = "manage_webhooks"


def at_least(role: Role) -> frozenset[Role]:
    """``role`` and every admin role above it."""
    return frozenset(LADDER[LADDER.index(role) :])


PERMISSIONS: Mapping[Operation, frozenset[Role]] = {
    Operation.READ: at_least(Role.READER),
    Operation.EDIT_FLAG: at_least(Role.EDITOR),
    Operation.SET_STATE: at_least(Role.EDITOR),
    Operation.KILL: at_least(Role.OPERATOR) | {Role.GUARD},
    Operation.UNKILL: at_least(Role.OPERATOR),
    Operation.PLAN: at_least(Role.EDITOR),
    Operation.STOP_PLAN: at_least(Role.OPERATOR),
    Operation.CREATE_ENVIRONMENT: at_least(Role.ADMIN),
    Operation.MANAGE_TOKENS: at_least(Role.ADMIN),
    Operation.READ_TOKEN_HISTORY: at_least(Role.ADMIN),
    Operation.MANAGE_WEBHOOKS: at_least(Role.ADMIN),
}
"""Which roles may perform each operation: the only place a role is compared."""

CLAIMS_ACTOR: frozenset[Role] = frozenset({Role.GUARD})
"""The roles whose tokens may name an actor of their own (``X-Flagrail-Actor``)."""


def _least(roles: Iterable[Role]) -> Role:
    listed = [r for r in LADDER if r in set(roles)]
    return listed[0] if listed else Role.ADMIN


def _needs(roles: frozenset[Role]) -> str:
    """``'operator' or above`` (plus ``, or 'guard'`` when a guard may)."""
    text = f"{_least(roles).value!r} or above"
    return f"{text}, or {Role.GUARD.value!r}" if Role.GUARD in roles else text


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of an admin operation. Immutable; safe to share between threads.

    ``token_id`` is None only for the break-glass CLI. ``environments`` None means
    every environment; ``flag_patterns`` None means every flag (else fnmatch patterns
    the token may act on). ``claimed_actor`` is the actor a ``guard`` token named
    itself (``X-Flagrail-Actor: guard:<host>:<pid>``; ``from_token`` refuses it from
    any other role); changes are recorded under ``actor``. ``user`` is the person
    behind the call (a console user's name, or the user a token was issued to), None
    for a token of no user and for the break-glass CLI.
    """

    token_id: str | None
    name: str
    role: Role
    environments: tuple[str, ...] | None = None
    flag_patterns: tuple[str, ...] | None = None
    claimed_actor: str | None = None
    user: str | None = None

    @classmethod
    def from_token(cls, token: TokenInfo, *, claimed_actor: str | None = None) -> Principal:
        """The principal of ``token``, with its environments and flag patterns.

        Raises ``ForbiddenError`` (field ``X-Flagrail-Actor``) when ``claimed_actor`` is
        given for a token whose role may not claim one (``CLAIMS_ACTOR``): refused
        rather than ignored, so a caller never believes a name it sent was recorded.
        """
        if claimed_actor is not None and token.role not in CLAIMS_ACTOR:
            raise ForbiddenError(
                f"token {token.name!r} has role {token.role.value!r}; only a "
                f"{Role.GUARD.value!r} token may send X-Flagrail-Actor",
                field="X-Flagrail-Actor",
            )
        return cls(
            token.id,
            token.name,
            token.role,
            token.environments,
            token.flags,
            claimed_actor,
            token.user,
        )

    @classmethod
    def from_user(cls, user: User) -> Principal:
        """The principal of a console user (a live session's): the user's role and
        environments, every flag, history actor ``user:<name>``, no token."""
        return cls(None, user.actor, user.role, user.environments, user=user.name)

    @classmethod
    def break_glass(cls, actor: str) -> Principal:
        """The CLI working directly on the database: an unscoped admin named ``actor``
        (``cli:<user>``), with no token."""
        return cls(None, actor, Role.ADMIN)

    @property
    def actor(self) -> Actor:
        """Who the history records for this principal's changes: the claimed actor (a
        guard's) or the token's name, with the token's id and name beside it."""
        if self.token_id is None:
            return Actor(self.claimed_actor or self.name)
        return Actor(self.claimed_actor or self.name, self.token_id, self.name, self.claimed_actor)

    @property
    def scope(self) -> tuple[str, ...] | None:
        return self.environments

    def may(self, operation: Operation) -> bool:
        return self.role in PERMISSIONS[operation]

    def allow(self, operation: Operation) -> None:
        """Raise ``ForbiddenError`` unless this principal's role may perform ``operation``."""
        if not self.may(operation):
            raise ForbiddenError(
                f"token {self.name!r} has role {self.role.value!r}; "
                f"this needs {_needs(PERMISSIONS[operation])}"
            )

    def covers(self, environment: str) -> bool:
        return self.environments is None or environment in self.environments

    def check_env(self, environment: str) -> None:
        """Raise ``ForbiddenError`` unless the principal covers ``environment``."""
        if not self.covers(environment):
            raise ForbiddenError(
                f"token {self.name!r} is not scoped to environment {environment!r}",
                field="environment",
            )

    def check_envs(self, environments: Sequence[str]) -> None:
        for env in environments:
            self.check_env(env)

    def check_unscoped(self, what: str) -> None:
        """Raise ``ForbiddenError`` unless the principal covers every environment."""
        if self.environments is not None:
            raise ForbiddenError(f"{what} needs a token scoped to every environment")

    def check_flag(self, key: str) -> None:
        """Raise ``ForbiddenError`` unless ``key`` matches one of the flag patterns."""
        if self.flag_patterns is not None and not any(
            fnmatch.fnmatchcase(key, p) for p in self.flag_patterns
        ):
            raise ForbiddenError(f"token {self.name!r} may not act on flag {key!r}", field="key")

    def within_scope(self, environments: Sequence[str] | None) -> bool:
        """Whether a token scoped to ``environments`` (None: all) lies within this scope."""
        if self.environments is None:
            return True
        return environments is not None and set(environments) <= set(self.environments)

    def visible(self, environments: Iterable[str]) -> list[str]:
        return [env for env in environments if self.covers(env)]
