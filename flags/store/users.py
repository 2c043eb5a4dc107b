"""People of the console: users, their server-side sessions, login throttling, and
which environments are protected (a change there needs the environment's name typed).

``UserStore`` is SQL only, on the engine of a ``SqlFlagStore``. Passwords are hashed
with argon2id (argon2-cffi). A session id is 32 random bytes; only its SHA-256 is
stored, so a copy of the database logs nobody in. A session ends when it is revoked
(logout, user disabled) or left idle longer than ``idle_timeout``.

Creating, disabling and enabling a user each write a history row (``user.create``,
``user.disable``, ``user.enable``) in the change's own transaction.

``LoginThrottle`` counts failed logins per user name and per client address in this
process: the sixth failure within a minute for either is refused before the password
is checked.

Thread-safe: every call runs in its own transaction; the throttle holds a lock.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import (
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from flags.errors import (
    AlreadyExistsError,
    NotFoundError,
    UnauthenticatedError,
    ValidationError,
)
from flags.history import Actor
from flags.model import Action, Role, validate_environment_name
from flags.store import history as history_log
from flags.store.tables import console_environment_protection as protection
from flags.store.tables import console_sessions as sessions
from flags.store.tables import console_users as users
from flags.store.token_cache import token_cache_for
from flags.store.writes import write_transaction

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_PROTECTED",
    "LoginThrottle",
    "LoginThrottledError",
    "Session",
    "User",
    "UserNotFoundError",
    "UserStore",
]

DEFAULT_IDLE_TIMEOUT = timedelta(hours=8)
DEFAULT_PROTECTED = frozenset({"production"})
USER_ROLES = (Role.READER, Role.OPERATOR, Role.EDITOR, Role.ADMIN)
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
MIN_PASSWORD = 12


class UserNotFoundError(NotFoundError):
    """No user of that name."""

    code = "user_not_found"


class LoginThrottledError(UnauthenticatedError):
    """Too many failed logins for this user or from this address within a minute."""

    code = "login_throttled"


@dataclass(frozen=True, slots=True)
class User:
    """A person: a role and environment scopes exactly like a token's."""

    name: str
    role: Role
    environments: tuple[str, ...] | None
    created_at: datetime
    disabled: bool = False

    @property
    def actor(self) -> str:
        """The history actor of this user's changes."""
        return f"user:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The public form (no password hash): what ``/admin/users`` and the history show."""
        return {
            "name": self.name,
            "actor": self.actor,
            "role": self.role.value,
            "environments": list(self.environments) if self.environments is not None else None,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: whose it is and the CSRF token its forms carry."""

    user: User
    csrf: str
    created_at: datetime
    last_seen_at: datetime


def validate_user_name(name: object, field: str = "name") -> str:
    """1..64 of ``a-z 0-9 . _ -``. Raises ``ValidationError`` naming ``field``."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= NAME_CHARS:
        raise ValidationError(
            f"{field} must be 1-64 characters of a-z, 0-9, '.', '_', '-'", field=field
        )
    return name


def validate_password(password: object, field: str = "password") -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= 1024:
        raise ValidationError(f"{field} must be {MIN_PASSWORD} to 1024 characters", field=field)
    return password


def _hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _user(row: object) -> User:
    envs = row.environments  # type: ignore[attr-defined]
    return User(
        name=row.name,  # type: ignore[attr-defined]
        role=Role(row.role),  # type: ignore[attr-defined]
        environments=None if envs is None else tuple(envs),
        created_at=_utc(row.created_at),  # type: ignore[attr-defined]
        disabled=bool(row.disabled),  # type: ignore[attr-defined]
    )


class LoginThrottle:
    """At most ``limit`` failed logins per ``window`` per user name and per address."""

    def __init__(
        self,
        *,
        limit: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.limit = limit
        self.window = window
        self.clock = clock or time.monotonic
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        seen = self._failures.setdefault(key, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        return seen

    def check(self, user: str, address: str) -> None:
        """Raise ``LoginThrottledError`` if either key already has ``limit`` failures."""
        now = self.clock()
        with self._lock:
            for key in (f"u:{user}", f"a:{address}"):
                if len(self._recent(key, now)) >= self.limit:
                    raise LoginThrottledError(
                        "too many failed logins; try again in a minute", field="username"
                    )

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            for key in (f"u:{user}", f"a:{address}"):
                self._recent(key, now).append(now)
            if len(self._failures) > 100_000:  # bounded: forget keys with no recent failure
                for key in [k for k, v in self._failures.items() if not self._recent(k, now)]:
                    del self._failures[key]


class UserStore:
    """Users, sessions and environment protection on ``engine``.

    ``clock`` (UTC now) is injectable so session expiry is testable without sleeping.
    Constructing it does no I/O; ``start()`` creates the console tables if missing.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        idle_timeout: timedelta = DEFAULT_IDLE_TIMEOUT,
        clock: Callable[[], datetime] | None = None,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.clock = clock or (lambda: datetime.now(UTC))
        self.hasher = hasher or PasswordHasher()  # argon2id with RFC 9106 low-memory params
        self._dummy_hash: str | None = None

    def start(self) -> None:
        """Nothing to start: the console's tables are made by the migrations
        (``0007_console``) like every other table."""

    def close(self) -> None:
        """Nothing to close: the engine belongs to the flag store."""

    # ------------------------------------------------------------ users
    def create_user(
        self,
        name: str,
        password: str,
        role: Role | str,
        environments: Sequence[str] | None = None,
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> User:
        """Create a user, with its ``user.create`` history row by ``actor`` in the same
        transaction. Raises ``ValidationError`` (naming the field),
        ``AlreadyExistsError``."""
        validate_user_name(name)
        validate_password(password)
        try:
            role = Role(role)
        except ValueError:
            role = None  # type: ignore[assignment]
        if role not in USER_ROLES:
            raise ValidationError(
                "role must be one of " + ", ".join(r.value for r in USER_ROLES), field="role"
            )
        envs = None
        if environments is not None:
            envs = sorted({validate_environment_name(e, "environments") for e in environments})
        now = self.clock()
        user = User(name, role, None if envs is None else tuple(envs), now)
        password_hash = self.hasher.hash(password)
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(
                    insert(users).values(
                        name=name,
                        password_hash=password_hash,
                        role=role.value,
                        environments=envs,
                        disabled=False,
                        created_at=now,
                    )
                )
                history_log.record_change(
                    conn,
                    actor=actor,
                    action=Action.USER_CREATE,
                    after=user.to_dict(),
                    request_id=request_id,
                )
        except IntegrityError as exc:
            raise AlreadyExistsError(f"user {name!r} already exists", field="name") from exc
        return user

    def get_user(self, name: str) -> User:
        """Raises ``UserNotFoundError``."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            raise UserNotFoundError(f"user {name!r} does not exist", field="name")
        return _user(row)

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            return [_user(r) for r in conn.execute(select(users).order_by(users.c.name))]

    def count_users(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(users.c.name)).all())

    def set_disabled(
        self,
        name: str,
        disabled: bool = True,
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> User:
        """Disable (or enable) a user, with its ``user.disable`` / ``user.enable``
        history row by ``actor`` in the same transaction. Disabling ends every session
        and stops the user's tokens. A user already so is left as it is, with no row.
        Raises ``UserNotFoundError``."""
        with write_transaction(self.engine) as conn:
            row = conn.execute(select(users).where(users.c.name == name).with_for_update()).first()
            if row is None:
                raise UserNotFoundError(f"user {name!r} does not exist", field="name")
            before = _user(row)
            if before.disabled == disabled:
                return before
            conn.execute(update(users).where(users.c.name == name).values(disabled=disabled))
            if disabled:
                conn.execute(
                    update(sessions).where(sessions.c.user_name == name).values(revoked=True)
                )
            after = replace(before, disabled=disabled)
            history_log.record_change(
                conn,
                actor=actor,
                action=Action.USER_DISABLE if disabled else Action.USER_ENABLE,
                before=before.to_dict(),
                after=after.to_dict(),
                request_id=request_id,
            )
        if disabled:  # the user's tokens stop at once in this process too
            token_cache_for(self.engine).clear()
        return after

    def verify(self, name: str, password: str) -> User:
        """The user whose password this is. Raises ``UnauthenticatedError`` for an unknown
        or disabled user or a wrong password (the same message, the same work)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).first()
        if row is None:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))
            self._check(self._dummy_hash, password)
            raise UnauthenticatedError("wrong user name or password", field="username")
        if not self._check(row.password_hash, password) or row.disabled:
            raise UnauthenticatedError("wrong user name or password", field="username")
        return _user(row)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    # ------------------------------------------------------------ sessions
    def open_session(self, user: User) -> tuple[str, Session]:
        """A new session for ``user``: its id (for the cookie; not stored) and the session."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = self.clock()
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(sessions).values(
                    id_hash=_hash_id(session_id),
                    user_name=user.name,
                    csrf=csrf,
                    created_at=now,
                    last_seen_at=now,
                    revoked=False,
                )
            )
            # Sessions idle for long are gone for good: keep the table small.
            conn.execute(delete(sessions).where(sessions.c.last_seen_at < now - timedelta(days=30)))
        return session_id, Session(user, csrf, now, now)

    def session(self, session_id: str) -> Session | None:
        """The live session of ``session_id`` (its idle clock restarted), or None when it
        is unknown, revoked, idle past ``idle_timeout`` or its user is disabled."""
        if not session_id or len(session_id) > 200:
            return None
        now = self.clock()
        key = _hash_id(session_id)
        with self.engine.connect() as conn:  # a read; a write below only when due
            row = conn.execute(
                select(
                    users,
                    sessions.c.csrf,
                    sessions.c.created_at.label("session_created_at"),
                    sessions.c.last_seen_at,
                    sessions.c.revoked,
                )
                .join(users, users.c.name == sessions.c.user_name)
                .where(sessions.c.id_hash == key)
            ).first()
            if row is None or row.revoked or row.disabled:
                return None
            last = _utc(row.last_seen_at)
        if now - last > self.idle_timeout:
            with write_transaction(self.engine) as conn:
                conn.execute(update(sessions).where(sessions.c.id_hash == key).values(revoked=True))
            return None
        if now - last > timedelta(seconds=30):  # fewer writes: a 30 s resolution is plenty
            with write_transaction(self.engine) as conn:
                conn.execute(
                    update(sessions).where(sessions.c.id_hash == key).values(last_seen_at=now)
                )
                last = now
        return Session(_user(row), row.csrf, _utc(row.session_created_at), last)

    def revoke_session(self, session_id: str) -> None:
        """End a session (logout). Unknown ids are ignored."""
        with write_transaction(self.engine) as conn:
            conn.execute(
                update(sessions)
                .where(sessions.c.id_hash == _hash_id(session_id))
                .values(revoked=True)
            )

    # ------------------------------------------------------------ protected environments
    def protected(self, environments: Iterable[str]) -> set[str]:
        """Those of ``environments`` that are protected (``production`` unless unmarked)."""
        names = list(environments)
        with self.engine.connect() as conn:
            marks = {
                r.environment: bool(r.protected)
                for r in conn.execute(select(protection).where(protection.c.environment.in_(names)))
            }
        return {n for n in names if marks.get(n, n in DEFAULT_PROTECTED)}

    def set_protected(self, environment: str, protected: bool) -> None:
        validate_environment_name(environment)
        with write_transaction(self.engine) as conn:
            conn.execute(delete(protection).where(protection.c.environment == environment))
            conn.execute(insert(protection).values(environment=environment, protected=protected))
