"""SqlFlagStore: flags, states, environments and tokens on SQLAlchemy 2.

Every mutation runs in one transaction with its history rows (``flags.store.history``)
and, for state changes, the environment version bump: all commit or none do.
Driver errors are translated here, once: an unreachable database becomes
``StoreUnavailableError``. After a commit that changed what SDKs see, each
``listeners`` callable gets the ``FlagChanged`` events (exceptions there are
logged, never raised: the change is already committed).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from flags.errors import (
    AlreadyExistsError,
    ConflictError,
    EnvironmentNotFoundError,
    FlagNotFoundError,
    FlagrailError,
    StoreUnavailableError,
    TokenNotFoundError,
    ValidationError,
    VersionConflictError,
)
from flags.history import Actor, HistoryPage, HistoryQuery
from flags.model import (
    Action,
    Environment,
    Flag,
    FlagChanged,
    FlagKind,
    FlagRecord,
    FlagState,
    Role,
    Snapshot,
    StateChange,
    TokenInfo,
    validate_environment_name,
    validate_flag_key,
    validate_flag_patterns,
)
from flags.store import KillResult
from flags.store import history as history_log
from flags.store import tables as t

__all__ = ["KillResult", "SqlFlagStore", "cli_actor", "hash_token", "make_engine"]

log = logging.getLogger("flagrail.store")

Listener = Callable[[Sequence[FlagChanged]], None]
TOKEN_PREFIX = "frl_"


def hash_token(secret: str) -> str:
    """SHA-256 hex of a token value: the only form in which tokens are stored."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def cli_actor() -> str:
    """The actor name of break-glass CLI changes: ``cli:<os user>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}"


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine tuned for flagrail: SQLite in WAL mode with writers serialized by
    ``BEGIN IMMEDIATE`` (no lock-upgrade deadlocks); PostgreSQL with a pre-pinged pool.

    SQLite connections are pooled too: closing the last connection to a WAL database
    checkpoints it, which would add milliseconds to every request.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Writers take the write lock up front, so two writers never deadlock
            # upgrading a read lock; readers use a plain deferred BEGIN.
            write = conn.get_execution_options().get("flagrail_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(url, **kwargs)


def _unstorable(exc: DataError) -> ValidationError:
    """The database refused a value (PostgreSQL: a NUL character, a number out of range):
    bad input, not an outage."""
    detail = (str(exc.orig).splitlines() or [type(exc.orig).__name__])[0][:200]
    return ValidationError(f"a value cannot be stored: {detail}")


@contextmanager
def _translated_errors(*, passing: tuple[type[Exception], ...]) -> Iterator[None]:
    """Translate driver errors, once for every connection: a refused value becomes
    ``ValidationError``, any other driver error ``StoreUnavailableError``; the
    ``passing`` types go through as they are."""
    try:
        yield
    except passing:
        raise
    except DataError as exc:
        raise _unstorable(exc) from exc
    except (DBAPIError, SQLAlchemyError) as exc:
        raise StoreUnavailableError(f"database error: {type(exc).__name__}") from exc


def _no_environment(name: str, field: str = "environment") -> EnvironmentNotFoundError:
    return EnvironmentNotFoundError(f"environment {name!r} does not exist", field=field)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _state_from_row(row: Any) -> FlagState:
    return FlagState(
        enabled=bool(row.enabled),
        rollout=int(row.rollout),
        tenants_on=frozenset(row.tenants_on or ()),
        tenants_off=frozenset(row.tenants_off or ()),
        killed=bool(row.killed),
        kill_reason=row.kill_reason,
        killed_at=_utc(row.killed_at),
        killed_by=row.killed_by,
        version=int(row.version),
    )


def _state_values(state: FlagState) -> dict[str, Any]:
    return {
        "enabled": state.enabled,
        "rollout": state.rollout,
        "tenants_on": sorted(state.tenants_on),
        "tenants_off": sorted(state.tenants_off),
        "killed": state.killed,
        "kill_reason": state.kill_reason,
        "killed_at": state.killed_at,
        "killed_by": state.killed_by,
        "version": state.version,
        "updated_at": _now(),
    }


def _flag_from_row(row: Any) -> Flag:
    return Flag(
        key=row.key,
        description=row.description or "",
        kind=FlagKind(row.kind),
        owner=row.owner,
        tags=tuple(row.tags or ()),
        created_at=_utc(row.created_at),
        archived=bool(row.archived),
    )


def flag_to_dict(flag: Flag) -> dict[str, Any]:
    return {
        "key": flag.key,
        "description": flag.description,
        "kind": flag.kind.value,
        "owner": flag.owner,
        "tags": list(flag.tags),
        "archived": flag.archived,
        "created_at": flag.created_at.isoformat() if flag.created_at else None,
    }


class SqlFlagStore:
    """The flag store on a SQL database (SQLite or PostgreSQL).

    Thread-safe: each call runs on its own pooled connection and transaction.
    Constructing it does no I/O; the first call connects.
    """

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self.listeners: list[Listener] = []
        self.is_postgres = self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction; driver errors become ``StoreUnavailableError``. An
        ``IntegrityError`` passes through, for the caller to name the conflict."""
        passing = (FlagrailError, IntegrityError)
        with _translated_errors(passing=passing), self.engine.connect() as conn:
            conn = conn.execution_options(flagrail_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads; driver errors become ``StoreUnavailableError``.

        On PostgreSQL it autocommits: under READ COMMITTED each statement has its own
        snapshot inside a transaction too, and without BEGIN and ROLLBACK a one-query
        read (every request's token check) is one round trip instead of three.
        """
        with _translated_errors(passing=(FlagrailError,)), self.engine.connect() as conn:
            if self.is_postgres:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the database answers."""
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def publish(self, events: Sequence[FlagChanged]) -> None:
        """Hand committed ``events`` to every listener (call after the commit). A
        listener's exception is logged, never raised."""
        if not events:
            return
        for listener in list(self.listeners):
            try:
                listener(events)
            except Exception:  # a listener must never fail a committed change
                log.exception("change listener %r failed", listener)

    # ------------------------------------------------------------ environments
    def list_environments(self) -> list[Environment]:
        with self.read() as conn:
            rows = conn.execute(select(t.environments).order_by(t.environments.c.name)).all()
        return [Environment(r.name, _utc(r.created_at), int(r.version)) for r in rows]

    def get_environment(self, name: str) -> Environment:
        with self.read() as conn:
            row = conn.execute(select(t.environments).where(t.environments.c.name == name)).first()
        if row is None:
            raise _no_environment(name)
        return Environment(row.name, _utc(row.created_at), int(row.version))

    def create_environment(
        self, name: str, *, actor: str | Actor, request_id: str | None = None
    ) -> Environment:
        """Create an environment; every existing flag gets a disabled state in it."""
        validate_environment_name(name, "name")
        now = _now()
        with self.transaction() as conn:
            exists = conn.execute(
                select(t.environments.c.name).where(t.environments.c.name == name)
            ).first()
            if exists:
                raise AlreadyExistsError(f"environment {name!r} exists", field="name")
            conn.execute(insert(t.environments).values(name=name, created_at=now, version=0))
            keys = conn.execute(select(t.flags.c.key)).scalars().all()
            if keys:
                conn.execute(
                    insert(t.flag_states),
                    [
                        {"flag_key": k, "environment": name, **_state_values(FlagState())}
                        for k in keys
                    ],
                )
            history_log.record_change(
                conn,
                actor=actor,
                action=Action.ENVIRONMENT_CREATE,
                environment=name,
                after={"name": name},
                request_id=request_id,
                at=now,
            )
        return Environment(name, now, 0)

    def _environment_names(self, conn: Connection) -> list[str]:
        return list(
            conn.execute(select(t.environments.c.name).order_by(t.environments.c.name)).scalars()
        )

    def _check_environments(self, conn: Connection, names: Iterable[str]) -> None:
        """Raise ``EnvironmentNotFoundError`` (field ``environments``) for the first of
        ``names`` that does not exist."""
        known = set(self._environment_names(conn))
        for name in names:
            if name not in known:
                raise _no_environment(name, "environments")

    def _bump_env(self, conn: Connection, env: str) -> int:
        return int(
            conn.execute(
                update(t.environments)
                .where(t.environments.c.name == env)
                .values(version=t.environments.c.version + 1)
                .returning(t.environments.c.version)
            ).scalar_one()
        )

    # ------------------------------------------------------------ flags
    def list_flags(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
        scope: Sequence[str] | None = None,
    ) -> list[FlagRecord]:
        """Flags matching every given filter, by key; states limited to ``scope``."""
        stmt = select(t.flags).order_by(t.flags.c.key)
        if kind is not None:
            stmt = stmt.where(t.flags.c.kind == kind)
        if archived is not None:
            stmt = stmt.where(t.flags.c.archived == archived)
        if q:
            like = f"%{q.lower()}%"
            stmt = stmt.where(t.flags.c.key.ilike(like) | t.flags.c.description.ilike(like))
        with self.read() as conn:
            flag_rows = conn.execute(stmt).all()
            state_stmt = select(t.flag_states)
            if scope is not None:
                state_stmt = state_stmt.where(t.flag_states.c.environment.in_(list(scope)))
            state_rows = conn.execute(state_stmt).all()
        states: dict[str, dict[str, FlagState]] = {}
        for row in state_rows:
            states.setdefault(row.flag_key, {})[row.environment] = _state_from_row(row)
        out = []
        for row in flag_rows:
            flag = _flag_from_row(row)
            if tag is not None and tag not in flag.tags:
                continue
            out.append(FlagRecord(flag, dict(sorted(states.get(flag.key, {}).items()))))
        return out

    def get_flag(self, key: str, *, scope: Sequence[str] | None = None) -> FlagRecord:
        """The flag (archived ones too) with its states. Raises ``FlagNotFoundError``."""
        with self.read() as conn:
            return self._get_flag(conn, key, scope)

    def _get_flag(
        self, conn: Connection, key: str, scope: Sequence[str] | None = None
    ) -> FlagRecord:
        row = conn.execute(select(t.flags).where(t.flags.c.key == key)).first()
        if row is None:
            raise FlagNotFoundError(f"flag {key!r} does not exist", field="key")
        stmt = select(t.flag_states).where(t.flag_states.c.flag_key == key)
        if scope is not None:
            stmt = stmt.where(t.flag_states.c.environment.in_(list(scope)))
        states = {r.environment: _state_from_row(r) for r in conn.execute(stmt).all()}
        return FlagRecord(_flag_from_row(row), dict(sorted(states.items())))

    def create_flag(
        self,
        key: str,
        *,
        description: str = "",
        kind: FlagKind | str = FlagKind.RELEASE,
        owner: str | None = None,
        tags: Sequence[str] = (),
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord:
        """Create a flag, disabled in every environment. Raises ``AlreadyExistsError``."""
        validate_flag_key(key)
        try:
            kind = FlagKind(kind)
        except ValueError as exc:
            raise ValidationError(
                f"kind must be one of {[k.value for k in FlagKind]}", field="kind"
            ) from exc
        now = _now()
        flag = Flag(key, description, kind, owner, tuple(tags), now, False)
        events: list[FlagChanged] = []
        try:
            with self.transaction() as conn:
                if conn.execute(select(t.flags.c.key).where(t.flags.c.key == key)).first():
                    raise AlreadyExistsError(f"flag {key!r} exists", field="key")
                conn.execute(
                    insert(t.flags).values(
                        key=key,
                        description=description,
                        kind=kind.value,
                        owner=owner,
                        tags=list(tags),
                        created_at=now,
                        archived=False,
                    )
                )
                envs = self._environment_names(conn)
                state = FlagState()
                conn.execute(
                    insert(t.flag_states),
                    [{"flag_key": key, "environment": env, **_state_values(state)} for env in envs],
                )
                for env in envs:
                    events.append(FlagChanged(env, self._bump_env(conn, env), key, state))
                history_log.record_change(
                    conn,
                    actor=actor,
                    action=Action.FLAG_CREATE,
                    flag=key,
                    after=flag_to_dict(flag),
                    request_id=request_id,
                    at=now,
                )
        except IntegrityError as exc:
            raise AlreadyExistsError(f"flag {key!r} exists", field="key") from exc
        self.publish(events)
        return FlagRecord(flag, {e.environment: FlagState() for e in events})

    def update_flag(
        self,
        key: str,
        changes: dict[str, Any],
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord:
        """Change description, owner, tags or kind. Raises ``FlagNotFoundError``."""
        allowed = {"description", "owner", "tags", "kind"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValidationError(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        values = dict(changes)
        if "kind" in values:
            try:
                values["kind"] = FlagKind(values["kind"]).value
            except ValueError as exc:
                raise ValidationError("kind is not a flag kind", field="kind") from exc
        if "tags" in values:
            values["tags"] = list(values["tags"])
        with self.transaction() as conn:
            record = self._get_flag(conn, key)
            before = flag_to_dict(record.flag)
            if values:
                conn.execute(update(t.flags).where(t.flags.c.key == key).values(**values))
            after_record = self._get_flag(conn, key)
            after = flag_to_dict(after_record.flag)
            if after != before:
                history_log.record_change(
                    conn,
                    actor=actor,
                    action=Action.FLAG_UPDATE,
                    flag=key,
                    before=before,
                    after=after,
                    request_id=request_id,
                )
        return after_record

    def archive_flag(
        self, key: str, *, actor: str | Actor, request_id: str | None = None
    ) -> FlagRecord:
        """Archive a flag: SDKs then see it as missing. History is kept. Idempotent."""
        events: list[FlagChanged] = []
        with self.transaction() as conn:
            record = self._get_flag(conn, key)
            if record.flag.archived:
                return record
            conn.execute(
                update(t.flags)
                .where(t.flags.c.key == key)
                .values(archived=True, archived_at=_now())
            )
            for env in record.states:
                events.append(FlagChanged(env, self._bump_env(conn, env), key, None))
            after = self._get_flag(conn, key)
            history_log.record_change(
                conn,
                actor=actor,
                action=Action.FLAG_ARCHIVE,
                flag=key,
                before=flag_to_dict(record.flag),
                after=flag_to_dict(after.flag),
                request_id=request_id,
            )
        self.publish(events)
        return after

    # ------------------------------------------------------------ states
    def lock_state(self, conn: Connection, key: str, env: str) -> tuple[Flag, FlagState]:
        """The flag and its state in ``env``, the state row locked for update, inside the
        caller's ``transaction()``. Raises ``FlagNotFoundError``, ``EnvironmentNotFoundError``."""
        flag_row = conn.execute(select(t.flags).where(t.flags.c.key == key)).first()
        if flag_row is None:
            raise FlagNotFoundError(f"flag {key!r} does not exist", field="key")
        stmt = select(t.flag_states).where(
            t.flag_states.c.flag_key == key, t.flag_states.c.environment == env
        )
        if self.is_postgres:
            stmt = stmt.with_for_update()
        row = conn.execute(stmt).first()
        if row is None:
            env_exists = conn.execute(
                select(t.environments.c.name).where(t.environments.c.name == env)
            ).first()
            if env_exists is None:
                raise _no_environment(env)
            raise FlagNotFoundError(f"flag {key!r} has no state in {env!r}", field="key")
        return _flag_from_row(flag_row), _state_from_row(row)

    def write_state(
        self,
        conn: Connection,
        key: str,
        env: str,
        before: FlagState,
        after: FlagState,
        *,
        action: str,
        actor: str | Actor,
        reason: str | None,
        request_id: str | None,
    ) -> FlagChanged:
        """Write ``after`` as the state of ``key`` in ``env``, bump the environment's
        version and record the history row, inside the caller's ``transaction()``.
        Returns the event to ``publish`` after the commit."""
        conn.execute(
            update(t.flag_states)
            .where(t.flag_states.c.flag_key == key, t.flag_states.c.environment == env)
            .values(**_state_values(after))
        )
        env_version = self._bump_env(conn, env)
        history_log.record_change(
            conn,
            actor=actor,
            action=action,
            flag=key,
            environment=env,
            before=before.to_dict(),
            after=after.to_dict(),
            reason=reason,
            request_id=request_id,
            env_version=env_version,
        )
        return FlagChanged(env, env_version, key, after)

    def get_state(self, key: str, env: str) -> FlagState:
        with self.read() as conn:
            record = self._get_flag(conn, key, [env])
        if env not in record.states:
            raise _no_environment(env)
        return record.states[env]

    def update_state(
        self,
        key: str,
        env: str,
        change: StateChange,
        *,
        actor: str | Actor,
        expected_version: int | None = None,
        reason: str | None = None,
        request_id: str | None = None,
    ) -> FlagState:
        """Apply ``change`` to ``key`` in ``env``; the version grows by one.

        With ``expected_version``, raises ``VersionConflictError`` (carrying the
        current state) and writes nothing when the state moved on. An empty change,
        or one that changes nothing, writes nothing and returns the current state.
        Raises ``FlagNotFoundError``, ``EnvironmentNotFoundError``, ``ConflictError``
        (archived flag).
        """
        with self.transaction() as conn:
            flag, before = self.lock_state(conn, key, env)
            if expected_version is not None and expected_version != before.version:
                raise VersionConflictError(
                    f"flag {key!r} in {env!r} is at version {before.version}, "
                    f"not {expected_version}",
                    current=before.to_dict(),
                    field="If-Match",
                )
            if flag.archived:
                raise ConflictError(f"flag {key!r} is archived", field="key")
            candidate = change.apply(before)
            if candidate == before:
                return before
            after = FlagState(
                enabled=candidate.enabled,
                rollout=candidate.rollout,
                tenants_on=candidate.tenants_on,
                tenants_off=candidate.tenants_off,
                killed=before.killed,
                kill_reason=before.kill_reason,
                killed_at=before.killed_at,
                killed_by=before.killed_by,
                version=before.version + 1,
            )
            event_ = self.write_state(
                conn,
                key,
                env,
                before,
                after,
                action=Action.STATE_UPDATE,
                actor=actor,
                reason=reason,
                request_id=request_id,
            )
        self.publish([event_])
        return after

    def kill(
        self,
        key: str,
        environments: Sequence[str] | None,
        *,
        reason: str,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> KillResult:
        """Kill ``key`` in ``environments`` (None: all) in one transaction.

        Environments where it is already killed are left as they are (no history row).
        Raises ``ValidationError`` for an empty reason, ``FlagNotFoundError``,
        ``EnvironmentNotFoundError``.
        """
        return self._set_killed(
            key, environments, True, reason=reason, actor=actor, request_id=request_id
        )

    def unkill(
        self,
        key: str,
        environments: Sequence[str] | None,
        *,
        reason: str,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> KillResult:
        """Lift a kill; the mirror of ``kill``."""
        return self._set_killed(
            key, environments, False, reason=reason, actor=actor, request_id=request_id
        )

    def _set_killed(
        self,
        key: str,
        environments: Sequence[str] | None,
        killed: bool,
        *,
        reason: str,
        actor: str | Actor,
        request_id: str | None,
    ) -> KillResult:
        if not isinstance(reason, str) or not reason.strip():
            raise ValidationError("reason is required and must not be empty", field="reason")
        events: list[FlagChanged] = []
        with self.transaction() as conn:
            envs = None if environments is None else sorted(set(environments))
            states = self._lock_states(conn, key, envs)
            changing = [env for env, state in states.items() if state.killed != killed]
            if changing:
                # One statement per table, whatever the number of environments: the kill
                # is the emergency path and must stay fast.
                now = _now()
                kill_facts = {
                    "killed": killed,
                    "kill_reason": reason if killed else None,
                    "killed_at": now if killed else None,
                    "killed_by": str(actor) if killed else None,
                }
                conn.execute(
                    update(t.flag_states)
                    .where(
                        t.flag_states.c.flag_key == key,
                        t.flag_states.c.environment.in_(changing),
                    )
                    .values(**kill_facts, version=t.flag_states.c.version + 1, updated_at=now)
                )
                env_versions = {
                    name: int(version)
                    for name, version in conn.execute(
                        update(t.environments)
                        .where(t.environments.c.name.in_(changing))
                        .values(version=t.environments.c.version + 1)
                        .returning(t.environments.c.name, t.environments.c.version)
                    ).all()
                }
                rows = []
                for env in changing:
                    before = states[env]
                    after = replace(before, **kill_facts, version=before.version + 1)
                    states[env] = after
                    events.append(FlagChanged(env, env_versions[env], key, after))
                    rows.append(
                        {
                            "at": now,
                            "actor": actor,
                            "action": Action.KILL if killed else Action.UNKILL,
                            "flag": key,
                            "environment": env,
                            "before": before.to_dict(),
                            "after": after.to_dict(),
                            "reason": reason,
                            "request_id": request_id,
                            "env_version": env_versions[env],
                        }
                    )
                history_log.record_changes(conn, rows)
        self.publish(events)
        return KillResult(
            key, states, [e.environment for e in events], {e.environment: e.version for e in events}
        )

    def _lock_states(
        self, conn: Connection, key: str, envs: Sequence[str] | None
    ) -> dict[str, FlagState]:
        """The states of ``key`` in ``envs`` (None: every environment), locked for update
        (PostgreSQL; SQLite writers are serialized), in environment order. One query when
        all is well. Raises ``EnvironmentNotFoundError`` (field ``environments``), then
        ``FlagNotFoundError``."""
        stmt = select(t.flag_states).where(t.flag_states.c.flag_key == key)
        if envs is not None:
            stmt = stmt.where(t.flag_states.c.environment.in_(list(envs)))
        stmt = stmt.order_by(t.flag_states.c.environment)
        if self.is_postgres:
            stmt = stmt.with_for_update()
        states = {row.environment: _state_from_row(row) for row in conn.execute(stmt).all()}
        missing = [env for env in envs or () if env not in states]
        if missing or not states:
            self._check_environments(conn, missing)
            if conn.execute(select(t.flags.c.key).where(t.flags.c.key == key)).first() is None:
                raise FlagNotFoundError(f"flag {key!r} does not exist", field="key")
            if missing:
                raise FlagNotFoundError(f"flag {key!r} has no state in {missing[0]!r}", field="key")
        return states

    # ------------------------------------------------------------ snapshots
    def snapshot(self, env: str) -> Snapshot:
        """Every non-archived flag's state in ``env`` at one consistent version."""
        with self.transaction() as conn:
            row = conn.execute(
                select(t.environments.c.version).where(t.environments.c.name == env)
            ).first()
            if row is None:
                raise _no_environment(env)
            stmt = (
                select(t.flag_states)
                .join(t.flags, t.flags.c.key == t.flag_states.c.flag_key)
                .where(t.flag_states.c.environment == env, t.flags.c.archived.is_(False))
            )
            flags = {r.flag_key: _state_from_row(r) for r in conn.execute(stmt).all()}
        return Snapshot(env, int(row.version), flags)

    def environment_version(self, env: str) -> int:
        return self.get_environment(env).version

    # ------------------------------------------------------------ history
    def list_history(self, query: HistoryQuery) -> HistoryPage:
        with self.read() as conn:
            return history_log.list_changes(conn, query)

    # ------------------------------------------------------------ tokens
    def create_token(
        self,
        name: str,
        role: Role | str,
        environments: Sequence[str] | None,
        *,
        actor: str | Actor,
        request_id: str | None = None,
        flags: Sequence[str] | None = None,
    ) -> tuple[TokenInfo, str]:
        """Create a token; returns its info and its value (shown once, stored hashed).
        ``flags`` (None: every flag) are fnmatch patterns of the flag keys it may act
        on, checked by ``validate_flag_patterns``. Raises ``ValidationError``."""
        patterns = None if flags is None else validate_flag_patterns(flags)
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ValidationError(
                "name must be a non-empty string of at most 200 characters", field="name"
            )
        try:
            role = Role(role)
        except ValueError as exc:
            raise ValidationError(
                f"role must be one of {[r.value for r in Role]}", field="role"
            ) from exc
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(8)
        now = _now()
        with self.transaction() as conn:
            if environments is not None:
                self._check_environments(conn, environments)
                environments = sorted(set(environments))
            info = TokenInfo(
                token_id,
                name,
                role,
                tuple(environments) if environments is not None else None,
                now,
                flags=patterns,
            )
            conn.execute(
                insert(t.tokens).values(
                    id=token_id,
                    name=name,
                    role=role.value,
                    environments=list(environments) if environments is not None else None,
                    flags=list(patterns) if patterns is not None else None,
                    token_hash=hash_token(secret),
                    created_at=now,
                    created_by=str(actor),
                )
            )
            public = info.to_dict()
            history_log.record_change(
                conn,
                actor=actor,
                action=Action.TOKEN_CREATE,
                after=public,
                request_id=request_id,
                at=now,
            )
        return info, secret

    def list_tokens(self) -> list[TokenInfo]:
        with self.read() as conn:
            rows = conn.execute(select(t.tokens).order_by(t.tokens.c.created_at)).all()
        return [self._token_from_row(r) for r in rows]

    @staticmethod
    def _token_from_row(row: Any) -> TokenInfo:
        envs, patterns = row.environments, row.flags
        return TokenInfo(
            row.id,
            row.name,
            Role(row.role),
            tuple(envs) if envs is not None else None,
            _utc(row.created_at),
            row.revoked_at is not None,
            tuple(patterns) if patterns is not None else None,
        )

    def revoke_token(
        self, token_id: str, *, actor: str | Actor, request_id: str | None = None
    ) -> TokenInfo:
        """Revoke a token; it stops authenticating at once. Raises ``TokenNotFoundError``."""
        with self.transaction() as conn:
            row = conn.execute(select(t.tokens).where(t.tokens.c.id == token_id)).first()
            if row is None:
                raise TokenNotFoundError(f"token {token_id!r} does not exist", field="id")
            before = self._token_from_row(row)
            if before.revoked:
                return before
            conn.execute(
                update(t.tokens).where(t.tokens.c.id == token_id).values(revoked_at=_now())
            )
            after = replace(before, revoked=True)
            history_log.record_change(
                conn,
                actor=actor,
                action=Action.TOKEN_REVOKE,
                before=before.to_dict(),
                after=after.to_dict(),
                request_id=request_id,
            )
        return after

    def authenticate(self, secret: str) -> TokenInfo | None:
        """The live token whose value is ``secret``, else None. The stored hash is
        compared in constant time."""
        digest = hash_token(secret)
        with self.read() as conn:
            row = conn.execute(select(t.tokens).where(t.tokens.c.token_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        if row.revoked_at is not None:
            return None
        return self._token_from_row(row)
