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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    TextClause,
    and_,
    cast,
    create_engine,
    event,
    false,
    func,
    insert,
    not_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    SQLAlchemyError,
)

from flags.errors import (
    AlreadyExistsError,
    ConflictError,
    EnvironmentNotFoundError,
    FlagNotFoundError,
    FlagrailError,
    ForbiddenError,
    NotFoundError,
    StoreUnavailableError,
    TokenNotFoundError,
    ValidationError,
    VersionConflictError,
)
from flags.history import Actor, HistoryPage, HistoryQuery
from flags.model import VARIANT_NAME as _VARIANT_NAME
from flags.model import (
    Action,
    Environment,
    Flag,
    FlagChanged,
    FlagKind,
    FlagRecord,
    FlagState,
    FlagType,
    Role,
    Snapshot,
    StateChange,
    TokenInfo,
    Variant,
    validate_environment_name,
    validate_flag_key,
    validate_flag_patterns,
    validate_flag_type,
    validate_value,
    validate_variants,
)
from flags.store import FlagPage, KillResult
from flags.store import history as history_log
from flags.store import tables as t
from flags.store.token_cache import DEFAULT_TOKEN_TTL, token_cache_for
from flags.store.users import UserNotFoundError
from flags.store.writes import write_transaction

__all__ = ["KillResult", "SqlFlagStore", "cli_actor", "hash_token", "make_engine"]

log = logging.getLogger("flagrail.store")

Listener = Callable[[Sequence[FlagChanged]], None]
TOKEN_PREFIX = "frl_"
# A token issued to a console user may not reach beyond the user's role (#15): the
# rank a token's role needs of its user (a client token reads snapshots only; a
# guard kills, which an operator may).
USER_TOKEN_RANK = {
    Role.CLIENT: 0,
    Role.READER: 0,
    Role.OPERATOR: 1,
    Role.GUARD: 1,
    Role.EDITOR: 2,
    Role.ADMIN: 3,
}


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


def make_engine(url: str, *, ping_idle: float | None = None, **kwargs: Any) -> Engine:
    """An engine tuned for flagrail: SQLite in WAL mode with writers serialized by
    ``BEGIN IMMEDIATE`` (no lock-upgrade deadlocks); PostgreSQL with a pool that pings
    a connection idle for ``ping_idle`` seconds (default ``PING_IDLE``) before use
    (``pool_pre_ping=True`` in ``kwargs``: every checkout). ``kwargs`` go to
    ``create_engine``.

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
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_when_idle(engine, PING_IDLE if ping_idle is None else ping_idle)
    return engine


# A pooled PostgreSQL connection idle for longer than this is pinged before it is
# handed out (a database restart or a dropped link is found there, not by the
# request); one in use more recently is not: a kill costs one round trip less. A
# connection that died in between fails its request (503), and the pool then
# replaces every connection older than the failure.
PING_IDLE = 1.0


def _ping_when_idle(engine: Engine, idle: float) -> None:
    """SQLAlchemy's pre-ping, only for a connection idle for ``idle`` seconds or more
    (the pool retries the checkout with a new connection when the ping fails)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["flagrail_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("flagrail_idle_since")
        if since is not None and time.monotonic() - since < idle:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:  # any failure: this connection is not to be trusted
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


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


def _variants_from_json(raw: Any) -> tuple[Variant, ...]:
    """The stored variant list (written validated by this module) as ``Variant``s."""
    return tuple(Variant(item["name"], item["value"]) for item in raw or ())


def _variants_json(variants: Sequence[Variant]) -> list[dict[str, Any]]:
    return [v.to_dict() for v in variants]


STATE_WORDS = ("on", "partial", "off", "killed")


def _state_word(word: str) -> Any:
    """The ``flag_states`` condition of a state word (as the console shows a state):
    ``killed``; ``off`` (not enabled); ``on`` (enabled at 100 % with no tenant held
    off); ``partial`` (enabled, less than that). Raises ``ValidationError`` (``state``)."""
    s = t.flag_states.c
    full = and_(s.rollout >= 100, func.json_array_length(s.tenants_off) == 0)
    words = {
        "killed": s.killed == true(),
        "off": and_(s.killed == false(), s.enabled == false()),
        "on": and_(s.killed == false(), s.enabled == true(), full),
        "partial": and_(s.killed == false(), s.enabled == true(), not_(full)),
    }
    if word not in words:
        raise ValidationError(f"state must be one of {', '.join(STATE_WORDS)}", field="state")
    return words[word]


def _state_select() -> Any:
    """``flag_states`` rows joined with their flag's ``type`` and ``variants`` (a state
    carries its flag's definition; ``_state_from_row`` reads both)."""
    return select(t.flag_states, t.flags.c.type, t.flags.c.variants).join(
        t.flags, t.flags.c.key == t.flag_states.c.flag_key
    )


def _kill_statement_pg(some: bool) -> TextClause:
    """``SqlFlagStore._kill_states_pg``'s statement, for some environments
    (``:envs``) or all: lock the flag's states, write the kill facts on those whose
    ``killed`` differs, bump their environments, and return every locked state as it
    was with its environment's new version (null where nothing changed)."""
    columns = ", ".join(f"s.{column.name}" for column in t.flag_states.columns)
    which = "s.flag_key = :key" + (" AND s.environment = ANY(:envs)" if some else "")
    return text(
        f"WITH locked AS (SELECT {columns}, f.type, f.variants "
        "FROM flag_states AS s JOIN flags AS f ON f.key = s.flag_key "
        f"WHERE {which} ORDER BY s.environment FOR UPDATE OF s), "
        "changed AS (UPDATE flag_states AS s SET killed = :killed, "
        "kill_reason = :kill_reason, killed_at = :killed_at, killed_by = :killed_by, "
        "version = s.version + 1, updated_at = :now FROM locked "
        "WHERE s.flag_key = locked.flag_key AND s.environment = locked.environment "
        "AND locked.killed <> :killed RETURNING s.environment), "
        "bumped AS (UPDATE environments AS e SET version = e.version + 1 FROM changed "
        "WHERE e.name = changed.environment RETURNING e.name, e.version) "
        "SELECT locked.*, bumped.version AS env_version FROM locked "
        "LEFT JOIN bumped ON bumped.name = locked.environment ORDER BY locked.environment"
    )


# By whether the kill names its environments.
_KILL_PG = {some: _kill_statement_pg(some) for some in (False, True)}


def _state_from_row(row: Any) -> FlagState:
    """A state from a ``_state_select`` row. Rows written before typed flags (type
    ``boolean``, null variant columns) read back as boolean states, as before."""
    flag_type = FlagType(row.type or FlagType.BOOLEAN)
    state = FlagState(
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
    if flag_type is FlagType.BOOLEAN:
        return state
    return replace(
        state,
        type=flag_type,
        variants=_variants_from_json(row.variants),
        off_variant=row.off_variant,
        on_variant=row.on_variant,
        split=tuple((str(name), int(weight)) for name, weight in row.split or ()),
        tenant_variants=tuple(sorted((row.tenant_variants or {}).items())),
    )


def _state_values(state: FlagState) -> dict[str, Any]:
    """The ``flag_states`` columns of ``state`` (the flag's type and variants live on
    the flag row; a boolean state stores null variant columns)."""
    typed = state.type is not FlagType.BOOLEAN
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
        "off_variant": state.off_variant if typed else None,
        "on_variant": state.on_variant if typed else None,
        "split": [[name, weight] for name, weight in state.split] if typed else None,
        "tenant_variants": dict(state.tenant_variants) if typed else None,
    }


def _initial_state(row: Any) -> FlagState:
    """A new environment's state of the flag in ``row`` (a ``flags`` row): disabled,
    serving the flag's declared off/on variants."""
    flag_type = FlagType(row.type or FlagType.BOOLEAN)
    if flag_type is FlagType.BOOLEAN:
        return FlagState()
    return FlagState(
        type=flag_type,
        variants=_variants_from_json(row.variants),
        off_variant=row.off_variant,
        on_variant=row.on_variant,
    )


def _flag_from_row(row: Any) -> Flag:
    flag_type = FlagType(row.type or FlagType.BOOLEAN)
    typed = flag_type is not FlagType.BOOLEAN
    return Flag(
        key=row.key,
        description=row.description or "",
        kind=FlagKind(row.kind),
        owner=row.owner,
        tags=tuple(row.tags or ()),
        created_at=_utc(row.created_at),
        archived=bool(row.archived),
        type=flag_type,
        **(
            {
                "variants": _variants_from_json(row.variants),
                "off_variant": row.off_variant,
                "on_variant": row.on_variant,
            }
            if typed
            else {}
        ),
    )


def flag_to_dict(flag: Flag) -> dict[str, Any]:
    """The JSON form of a flag. ``type``, ``variants`` and the ``off_variant`` /
    ``on_variant`` a new environment starts with appear for a typed flag only, so a
    boolean flag's form (and its history rows) is the one of earlier releases."""
    data: dict[str, Any] = {
        "key": flag.key,
        "description": flag.description,
        "kind": flag.kind.value,
        "owner": flag.owner,
        "tags": list(flag.tags),
        "archived": flag.archived,
        "created_at": flag.created_at.isoformat() if flag.created_at else None,
    }
    if flag.type is not FlagType.BOOLEAN:
        data["type"] = flag.type.value
        data["variants"] = _variants_json(flag.variants)
        data["off_variant"] = flag.off_variant
        data["on_variant"] = flag.on_variant
    return data


def _flag_history(flag: Flag, off_variant: str | None, on_variant: str | None) -> dict[str, Any]:
    """A flag's history form: ``flag_to_dict`` plus, for a typed flag, the off/on
    variants a new environment starts with."""
    data = flag_to_dict(flag)
    if flag.type is not FlagType.BOOLEAN:
        data["off_variant"] = off_variant
        data["on_variant"] = on_variant
    return data


_States = dict[str, FlagState]
_Initial = tuple[str | None, str | None]
# An edit's new variant list and the renames ({old: new}) to apply to every use.
_VariantEdit = tuple[tuple[Variant, ...], dict[str, str]]
_VariantEditor = Callable[[Flag, _States, _Initial], _VariantEdit]


def _check_variant_name(name: object, field_name: str) -> None:
    if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
        raise ValidationError(
            f"{field_name} must match {_VARIANT_NAME.pattern}, got {name!r:.60}", field=field_name
        )


def _declared(flag: Flag, name: str, field_name: str) -> Variant:
    for variant in flag.variants:
        if variant.name == name:
            return variant
    raise NotFoundError(f"flag {flag.key!r} has no variant {name!r:.60}", field=field_name)


def _variant_uses(name: str, states: _States, initial: _Initial) -> list[str]:
    """Where variant ``name`` is served: ``<env> off_variant``, ``<env> split``, ...,
    and ``initial off_variant`` / ``initial on_variant`` (new environments')."""
    uses = [
        f"initial {field}"
        for field, value in zip(("off_variant", "on_variant"), initial, strict=True)
        if value == name
    ]
    for env, state in states.items():
        if state.off_variant == name:
            uses.append(f"{env} off_variant")
        if state.on_variant == name:
            uses.append(f"{env} on_variant")
        if any(n == name for n, _ in state.split):
            uses.append(f"{env} split")
        if any(n == name for _, n in state.tenant_variants):
            uses.append(f"{env} tenant_variants")
    return uses


def typed_definition(
    flag_type: object,
    variants: Sequence[Any] | None,
    off_variant: str | None,
    on_variant: str | None,
) -> tuple[FlagType, tuple[Variant, ...], str | None, str | None]:
    """Validate a new flag's type, variants and initial off/on variants.

    Returns ``(type, variants, off_variant, on_variant)``: for a boolean flag the
    on/off variants and ``None, None`` (it serves from its rules); for a typed flag
    the declared variants, the required ``off_variant`` and ``on_variant`` (default:
    the off variant). Raises ``ValidationError`` naming the field.
    """
    kind = validate_flag_type(flag_type)
    declared = validate_variants(kind, variants)
    if kind is FlagType.BOOLEAN:
        if off_variant not in (None, "off"):
            raise ValidationError("a boolean flag's off_variant is off", field="off_variant")
        if on_variant not in (None, "on"):
            raise ValidationError("a boolean flag's on_variant is on", field="on_variant")
        return kind, declared, None, None
    names = [v.name for v in declared]
    if off_variant is None:
        raise ValidationError(
            f"off_variant is required for a {kind.value} flag: the variant served when the "
            "flag is off, also under a kill",
            field="off_variant",
        )
    on_variant = off_variant if on_variant is None else on_variant
    for name, value in (("off_variant", off_variant), ("on_variant", on_variant)):
        if value not in names:
            raise ValidationError(f"{name} {value!r:.60} is not a declared variant", field=name)
    return kind, declared, off_variant, on_variant


class SqlFlagStore:
    """The flag store on a SQL database (SQLite or PostgreSQL).

    Thread-safe: each call runs on its own pooled connection and transaction.
    Constructing it does no I/O; the first call connects.
    """

    def __init__(
        self,
        url: str,
        *,
        engine: Engine | None = None,
        token_ttl: float = DEFAULT_TOKEN_TTL,
        ping_idle: float | None = None,
    ) -> None:
        """``token_ttl``: seconds ``authenticate`` may trust a token it read (0: read
        every time); see ``flags.store.token_cache``. ``ping_idle``: see
        ``make_engine`` (unused with ``engine``)."""
        self.url = url
        self.engine = engine or make_engine(url, ping_idle=ping_idle)
        self.listeners: list[Listener] = []
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self.tokens = token_cache_for(self.engine)
        self.tokens.ttl = token_ttl

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction; driver errors become ``StoreUnavailableError``. An
        ``IntegrityError`` passes through, for the caller to name the conflict."""
        passing = (FlagrailError, IntegrityError)
        with _translated_errors(passing=passing), write_transaction(self.engine) as conn:
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
            flag_rows = conn.execute(select(t.flags)).all()
            if flag_rows:
                conn.execute(
                    insert(t.flag_states),
                    [
                        {
                            "flag_key": row.key,
                            "environment": name,
                            **_state_values(_initial_state(row)),
                        }
                        for row in flag_rows
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
        where = self._flag_filters(kind=kind, tag=tag, archived=archived, q=q)
        with self.read() as conn:
            return self._records(conn, where, scope)

    def list_flags_page(
        self,
        *,
        kind: str | None = None,
        tag: str | None = None,
        archived: bool | None = None,
        q: str | None = None,
        owner: str | None = None,
        state: str | None = None,
        scope: Sequence[str] | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> FlagPage:
        """One page of ``list_flags`` (1-based ``page``, clamped to the last), filtered,
        sorted and cut in SQL: only the page's flags and their states are read. Also
        filters by ``owner`` and by ``state``, a state word (``killed``, ``off``,
        ``on``: enabled at 100 % with no tenant held off, ``partial``) that any of the
        flag's environments in ``scope`` is in. Raises ``ValidationError`` naming
        ``state``, ``page`` or ``page_size``."""
        if not 1 <= page_size <= 1000:
            raise ValidationError("page_size must be from 1 to 1000", field="page_size")
        if page < 1:
            raise ValidationError("page must be 1 or more", field="page")
        where = self._flag_filters(kind=kind, tag=tag, archived=archived, q=q)
        if owner is not None:
            where.append(t.flags.c.owner == owner)
        if state is not None:
            s = t.flag_states.c
            in_state = select(s.flag_key).where(_state_word(state))
            if scope is not None:
                in_state = in_state.where(s.environment.in_(list(scope)))
            # Both forms read ix_flag_states_killed_key (0013), not the rows.
            if state == "killed":
                # Kills are rare: a semi-join over the short killed = true range of
                # the index (SQLite, 10,000 flags: ~0.1 ms against ~8 ms to probe).
                where.append(t.flags.c.key.in_(in_state))
            else:
                # Common words: a probe per flag, a seek on (false, key), that stops at
                # its first match, so a page stops at its last flag. A semi-join here
                # would first collect every matching state row (SQLite, "partial":
                # ~20 ms a page against ~0.1 ms). PostgreSQL plans both alike.
                where.append(in_state.where(s.flag_key == t.flags.c.key).exists())
        with self.read() as conn:
            records = self._records(
                conn, where, scope, offset=(page - 1) * page_size, limit=page_size
            )
            if 0 < len(records) < page_size or (page == 1 and not records):
                # The last page: it tells the total, and the count's scan of every
                # matching flag (a search, a state) is saved.
                total = (page - 1) * page_size + len(records)
            else:
                count = select(func.count()).select_from(t.flags).where(*where)
                total = int(conn.execute(count).scalar_one())
                last = max(1, -(-total // page_size))
                if page > last:  # past the end: the last page instead
                    page = last
                    records = self._records(
                        conn, where, scope, offset=(page - 1) * page_size, limit=page_size
                    )
        return FlagPage(records, total, page, max(1, -(-total // page_size)))

    def _flag_filters(
        self, *, kind: str | None, tag: str | None, archived: bool | None, q: str | None
    ) -> list[Any]:
        """The WHERE terms on ``flags`` of ``list_flags``' filters."""
        where: list[Any] = []
        if kind is not None:
            where.append(t.flags.c.kind == kind)
        if archived is not None:
            where.append(t.flags.c.archived == archived)
        if q:
            # A case-insensitive substring: % and _ in q match themselves. Keys are
            # lowercase ASCII (FLAG_KEY), so the key needs no case folding per row
            # (PostgreSQL, 10,000 flags: ~6 ms a scan against ~12 ms with ILIKE); nor
            # does the description on SQLite, whose LIKE folds ASCII as its lower()
            # does (~3 ms against ~5 ms).
            needle = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{needle}%"
            described = t.flags.c.description
            if self.is_postgres:
                described = func.lower(described)
            where.append(t.flags.c.key.like(like, escape="\\") | described.like(like, escape="\\"))
        if tag is not None:
            if self.is_postgres:
                where.append(cast(t.flags.c.tags, JSONB).contains([tag]))
            else:
                tags = func.json_each(t.flags.c.tags).table_valued("value")
                where.append(select(tags.c.value).where(tags.c.value == tag).exists())
        return where

    @staticmethod
    def _records(
        conn: Connection,
        where: list[Any],
        scope: Sequence[str] | None,
        *,
        offset: int = 0,
        limit: int | None = None,
    ) -> list[FlagRecord]:
        """The flags matching ``where`` by key (``offset``/``limit``), each with its
        states in ``scope``; states are read for those flags only."""
        stmt = select(t.flags).where(*where).order_by(t.flags.c.key)
        state_stmt = _state_select()
        if limit is not None:
            stmt = stmt.offset(offset).limit(limit)
        flag_rows = conn.execute(stmt).all()
        if limit is not None and not flag_rows:
            return []
        if limit is not None:
            # Both sides by key: PostgreSQL otherwise hashes every flag for the join.
            keys = [r.key for r in flag_rows]
            state_stmt = state_stmt.where(
                t.flag_states.c.flag_key.in_(keys), t.flags.c.key.in_(keys)
            )
        elif where:
            matching = select(t.flags.c.key).where(*where)
            state_stmt = state_stmt.where(t.flag_states.c.flag_key.in_(matching))
        if scope is not None:
            state_stmt = state_stmt.where(t.flag_states.c.environment.in_(list(scope)))
        states: dict[str, dict[str, FlagState]] = {}
        for row in conn.execute(state_stmt).all():
            states.setdefault(row.flag_key, {})[row.environment] = _state_from_row(row)
        return [
            FlagRecord(_flag_from_row(row), dict(sorted(states.get(row.key, {}).items())))
            for row in flag_rows
        ]

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
        stmt = _state_select().where(t.flag_states.c.flag_key == key)
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
        type: FlagType | str = FlagType.BOOLEAN,
        variants: Sequence[Any] | None = None,
        off_variant: str | None = None,
        on_variant: str | None = None,
    ) -> FlagRecord:
        """Create a flag, disabled in every environment. Raises ``AlreadyExistsError``.

        A ``string``/``number``/``json`` flag declares its ``variants`` and its
        ``off_variant`` (the safe value: served when off, also under a kill);
        ``on_variant`` defaults to it. Every environment starts with both. A boolean
        flag takes neither (its variants are ``on``/``off``). Raises
        ``ValidationError`` naming the field (``type``, ``variants.1.value``,
        ``off_variant``, ...).
        """
        validate_flag_key(key)
        try:
            kind = FlagKind(kind)
        except ValueError as exc:
            raise ValidationError(
                f"kind must be one of {[k.value for k in FlagKind]}", field="kind"
            ) from exc
        flag_type, declared, off_variant, on_variant = typed_definition(
            type, variants, off_variant, on_variant
        )
        now = _now()
        flag = Flag(
            key,
            description,
            kind,
            owner,
            tuple(tags),
            now,
            False,
            flag_type,
            declared,
            off_variant,
            on_variant,
        )
        typed = flag_type is not FlagType.BOOLEAN
        state = (
            FlagState(
                type=flag_type, variants=declared, off_variant=off_variant, on_variant=on_variant
            )
            if typed
            else FlagState()
        )
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
                        type=flag_type.value,
                        variants=_variants_json(declared) if typed else None,
                        off_variant=off_variant,
                        on_variant=on_variant,
                    )
                )
                envs = self._environment_names(conn)
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
                    after=_flag_history(flag, off_variant, on_variant),
                    request_id=request_id,
                    at=now,
                )
        except IntegrityError as exc:
            raise AlreadyExistsError(f"flag {key!r} exists", field="key") from exc
        self.publish(events)
        return FlagRecord(flag, {e.environment: state for e in events})

    def update_flag(
        self,
        key: str,
        changes: dict[str, Any],
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord:
        """Change description, owner, tags or kind, or a typed flag's ``off_variant`` /
        ``on_variant`` (those a new environment starts with; a declared variant each).
        Raises ``FlagNotFoundError``, ``ValidationError`` naming the field."""
        allowed = {"description", "owner", "tags", "kind", "off_variant", "on_variant"}
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
            initial = select(t.flags.c.off_variant, t.flags.c.on_variant).where(
                t.flags.c.key == key
            )
            row = conn.execute(initial).one()
            before = _flag_history(record.flag, row.off_variant, row.on_variant)
            for name in ("off_variant", "on_variant"):
                if name not in values:
                    continue
                if record.flag.type is FlagType.BOOLEAN:
                    raise ValidationError(f"a boolean flag has no {name}", field=name)
                if not any(v.name == values[name] for v in record.flag.variants):
                    raise ValidationError(
                        f"{name} {values[name]!r:.60} is not a declared variant", field=name
                    )
            if values:
                conn.execute(update(t.flags).where(t.flags.c.key == key).values(**values))
            after_record = self._get_flag(conn, key)
            row = conn.execute(initial).one()
            after = _flag_history(after_record.flag, row.off_variant, row.on_variant)
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

    # ------------------------------------------------------------ variants (#19)
    def add_variant(
        self,
        key: str,
        name: str,
        value: Any,
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord:
        """Declare variant ``name`` serving ``value`` on a typed flag.

        Raises ``ValidationError`` (``name``, ``value``; ``type`` for a boolean flag),
        ``AlreadyExistsError`` (``name``), ``FlagNotFoundError``, ``ConflictError``
        (archived flag).
        """
        _check_variant_name(name, "name")

        def edit(flag: Flag, _states: _States, _initial: _Initial) -> _VariantEdit:
            if any(v.name == name for v in flag.variants):
                raise AlreadyExistsError(f"variant {name!r} exists", field="name")
            checked = validate_value(flag.type, value, "value")
            return validate_variants(flag.type, (*flag.variants, Variant(name, checked))), {}

        return self._edit_variants(key, edit, actor=actor, request_id=request_id)

    def set_variant_value(
        self,
        key: str,
        name: str,
        value: Any,
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord:
        """Change the value variant ``name`` serves. Raises ``NotFoundError`` (``name``),
        ``ValidationError`` (``value``), as ``add_variant`` otherwise."""

        def edit(flag: Flag, _states: _States, _initial: _Initial) -> _VariantEdit:
            _declared(flag, name, "name")
            checked = validate_value(flag.type, value, "value")
            return tuple(
                Variant(v.name, checked) if v.name == name else v for v in flag.variants
            ), {}

        return self._edit_variants(key, edit, actor=actor, request_id=request_id)

    def rename_variant(
        self,
        key: str,
        name: str,
        new_name: str,
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord:
        """Rename variant ``name`` to ``new_name`` everywhere it is used (every
        environment's off/on variant, split and pinned tenants, the flag's initial
        off/on variants). Raises ``NotFoundError`` (``name``), ``ValidationError`` /
        ``AlreadyExistsError`` (``new_name``), as ``add_variant`` otherwise."""
        _check_variant_name(new_name, "new_name")

        def edit(flag: Flag, _states: _States, _initial: _Initial) -> _VariantEdit:
            _declared(flag, name, "name")
            if new_name != name and any(v.name == new_name for v in flag.variants):
                raise AlreadyExistsError(f"variant {new_name!r} exists", field="new_name")
            renamed = tuple(
                Variant(new_name, v.value) if v.name == name else v for v in flag.variants
            )
            return renamed, {name: new_name}

        return self._edit_variants(key, edit, actor=actor, request_id=request_id)

    def remove_variant(
        self,
        key: str,
        name: str,
        *,
        actor: str | Actor,
        request_id: str | None = None,
    ) -> FlagRecord:
        """Remove variant ``name``. Refused with ``ConflictError`` (field ``name``,
        naming where) while any environment serves it (off/on variant, split, pinned
        tenants) or a new environment would (the flag's initial off/on variant).
        Raises ``NotFoundError`` (``name``), as ``add_variant`` otherwise."""

        def edit(flag: Flag, states: _States, initial: _Initial) -> _VariantEdit:
            _declared(flag, name, "name")
            uses = _variant_uses(name, states, initial)
            if uses:
                raise ConflictError(
                    f"variant {name!r} is in use: {', '.join(uses)} (serve another variant "
                    "there first; a flag's initial variants change with a flag update)",
                    field="name",
                )
            return tuple(v for v in flag.variants if v.name != name), {}

        return self._edit_variants(key, edit, actor=actor, request_id=request_id)

    def _edit_variants(
        self,
        key: str,
        edit: _VariantEditor,
        *,
        actor: str | Actor,
        request_id: str | None,
    ) -> FlagRecord:
        """Apply ``edit`` (flag, states, initial off/on -> new variants, renames) to a
        typed flag in one transaction: the flag row, every environment's state (version
        + 1, environment version + 1, so snapshots and ETags change) and one
        ``flag.update`` history row with the flag's variants before and after."""
        events: list[FlagChanged] = []
        with self.transaction() as conn:
            stmt = select(t.flags).where(t.flags.c.key == key)
            if self.is_postgres:
                stmt = stmt.with_for_update()
            row = conn.execute(stmt).first()
            if row is None:
                raise FlagNotFoundError(f"flag {key!r} does not exist", field="key")
            flag = _flag_from_row(row)
            if flag.type is FlagType.BOOLEAN:
                raise ValidationError(
                    "a boolean flag's variants are on and off; create a string, number or "
                    "json flag for other variants",
                    field="type",
                )
            if flag.archived:
                raise ConflictError(f"flag {key!r} is archived", field="key")
            states = self._lock_states(conn, key, None)
            variants, renames = edit(flag, states, (row.off_variant, row.on_variant))
            if variants == flag.variants and not renames:
                return FlagRecord(flag, states)

            def renamed(name: str | None) -> str | None:
                return None if name is None else renames.get(name, name)

            off, on = renamed(row.off_variant), renamed(row.on_variant)
            conn.execute(
                update(t.flags)
                .where(t.flags.c.key == key)
                .values(variants=_variants_json(variants), off_variant=off, on_variant=on)
            )
            after_states: dict[str, FlagState] = {}
            for env, before in states.items():
                after = replace(
                    before,
                    variants=variants,
                    off_variant=renamed(before.off_variant),
                    on_variant=renamed(before.on_variant),
                    split=tuple((renames.get(n, n), w) for n, w in before.split),
                    tenant_variants=tuple(
                        sorted((tenant, renames.get(n, n)) for tenant, n in before.tenant_variants)
                    ),
                    version=before.version + 1,
                )
                conn.execute(
                    update(t.flag_states)
                    .where(t.flag_states.c.flag_key == key, t.flag_states.c.environment == env)
                    .values(**_state_values(after))
                )
                after_states[env] = after
                events.append(FlagChanged(env, self._bump_env(conn, env), key, after))
            after_flag = replace(flag, variants=variants)
            history_log.record_change(
                conn,
                actor=actor,
                action=Action.FLAG_UPDATE,
                flag=key,
                before=_flag_history(flag, row.off_variant, row.on_variant),
                after=_flag_history(after_flag, off, on),
                request_id=request_id,
            )
        self.publish(events)
        return FlagRecord(after_flag, after_states)

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
        stmt = _state_select().where(
            t.flag_states.c.flag_key == key, t.flag_states.c.environment == env
        )
        if self.is_postgres:
            stmt = stmt.with_for_update(of=t.flag_states)
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
            if candidate.type is FlagType.BOOLEAN:
                # A boolean flag's variants are always on/off: naming them changes nothing.
                candidate = replace(candidate, off_variant=None, on_variant=None)
            if candidate == before:
                return before
            # The change never touches the kill fields, the type or the variants.
            after = replace(
                candidate,
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
        now = _now()
        kill_facts = {
            "killed": killed,
            "kill_reason": reason if killed else None,
            "killed_at": now if killed else None,
            "killed_by": str(actor) if killed else None,
        }
        with self.transaction() as conn:
            envs = None if environments is None else sorted(set(environments))
            if self.is_postgres:
                # The emergency path: lock, write and bump in one round trip.
                states, env_versions = self._kill_states_pg(conn, key, envs, kill_facts, now)
                changing = sorted(env_versions)
            else:
                states = self._lock_states(conn, key, envs)
                changing = [env for env, state in states.items() if state.killed != killed]
                env_versions = self._kill_states(conn, key, changing, kill_facts, now)
            if changing:
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

    def _kill_states(
        self,
        conn: Connection,
        key: str,
        changing: Sequence[str],
        kill_facts: dict[str, Any],
        now: datetime,
    ) -> dict[str, int]:
        """Write ``kill_facts`` on ``key``'s states in ``changing`` (locked by the
        caller) and bump those environments; their new versions. One statement per
        table, whatever the number of environments."""
        if not changing:
            return {}
        conn.execute(
            update(t.flag_states)
            .where(
                t.flag_states.c.flag_key == key,
                t.flag_states.c.environment.in_(changing),
            )
            .values(**kill_facts, version=t.flag_states.c.version + 1, updated_at=now)
        )
        return {
            name: int(version)
            for name, version in conn.execute(
                update(t.environments)
                .where(t.environments.c.name.in_(changing))
                .values(version=t.environments.c.version + 1)
                .returning(t.environments.c.name, t.environments.c.version)
            ).all()
        }

    def _kill_states_pg(
        self,
        conn: Connection,
        key: str,
        envs: Sequence[str] | None,
        kill_facts: dict[str, Any],
        now: datetime,
    ) -> tuple[dict[str, FlagState], dict[str, int]]:
        """``_lock_states`` and ``_kill_states`` in one PostgreSQL statement: the states
        of ``key`` in ``envs`` (None: all) as they were, locked, and the new versions of
        the environments whose state changed (a missing state is raised for after the
        write, which the caller's transaction then rolls back)."""
        params: dict[str, Any] = {"key": key, "now": now, **kill_facts}
        if envs is not None:
            params["envs"] = list(envs)
        rows = conn.execute(_KILL_PG[envs is not None], params).all()
        states = {row.environment: _state_from_row(row) for row in rows}
        missing = [env for env in envs or () if env not in states]
        if missing or not states:
            self._raise_missing(conn, key, missing)
        versions = {row.environment: int(row.env_version) for row in rows if row.env_version}
        return states, versions

    def _raise_missing(self, conn: Connection, key: str, missing: Sequence[str]) -> None:
        """Raise for ``key``'s states that are not there: ``EnvironmentNotFoundError``
        (field ``environments``) for an environment that does not exist, then
        ``FlagNotFoundError``; nothing when the flag exists and nothing is missing."""
        self._check_environments(conn, missing)
        if conn.execute(select(t.flags.c.key).where(t.flags.c.key == key)).first() is None:
            raise FlagNotFoundError(f"flag {key!r} does not exist", field="key")
        if missing:
            raise FlagNotFoundError(f"flag {key!r} has no state in {missing[0]!r}", field="key")

    def _lock_states(
        self, conn: Connection, key: str, envs: Sequence[str] | None
    ) -> dict[str, FlagState]:
        """The states of ``key`` in ``envs`` (None: every environment), locked for update
        (PostgreSQL; SQLite writers are serialized), in environment order. One query when
        all is well. Raises ``EnvironmentNotFoundError`` (field ``environments``), then
        ``FlagNotFoundError``."""
        stmt = _state_select().where(t.flag_states.c.flag_key == key)
        if envs is not None:
            stmt = stmt.where(t.flag_states.c.environment.in_(list(envs)))
        stmt = stmt.order_by(t.flag_states.c.environment)
        if self.is_postgres:
            stmt = stmt.with_for_update(of=t.flag_states)
        states = {row.environment: _state_from_row(row) for row in conn.execute(stmt).all()}
        missing = [env for env in envs or () if env not in states]
        if missing or not states:
            self._raise_missing(conn, key, missing)
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
            stmt = _state_select().where(
                t.flag_states.c.environment == env, t.flags.c.archived.is_(False)
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
        user: str | None = None,
    ) -> tuple[TokenInfo, str]:
        """Create a token; returns its info and its value (shown once, stored hashed).
        ``flags`` (None: every flag) are fnmatch patterns of the flag keys it may act
        on, checked by ``validate_flag_patterns``. ``user`` issues it to that console
        user (it then authenticates only while the user is enabled). Raises
        ``ValidationError``; ``UserNotFoundError`` (field ``user``) for an unknown user and
        ``ConflictError`` for a disabled one."""
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
            if user is not None:
                self._check_user(conn, user, role, environments)
            info = TokenInfo(
                token_id,
                name,
                role,
                tuple(environments) if environments is not None else None,
                now,
                flags=patterns,
                user=user,
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
                    user_name=user,
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

    @staticmethod
    def _check_user(
        conn: Connection, name: str, role: Role, environments: Sequence[str] | None
    ) -> None:
        """Raise unless console user ``name`` exists, is enabled and could do what a
        token of ``role`` in ``environments`` does (field ``user``): a user's token
        never reaches beyond the user."""
        row = conn.execute(select(t.console_users).where(t.console_users.c.name == name)).first()
        if row is None:
            raise UserNotFoundError(f"user {name!r} does not exist", field="user")
        if row.disabled:
            raise ConflictError(f"user {name!r} is disabled", field="user")
        if USER_TOKEN_RANK[role] > USER_TOKEN_RANK[Role(row.role)]:
            raise ForbiddenError(
                f"user {name!r} has role {row.role!r}; a token of theirs cannot have role "
                f"{role.value!r}",
                field="role",
            )
        if row.environments is not None and (
            environments is None or not set(environments) <= set(row.environments)
        ):
            raise ForbiddenError(
                f"user {name!r} is scoped to {sorted(row.environments)}; so must a token "
                "of theirs be",
                field="environments",
            )

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
            row.user_name,
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
        self.tokens.clear()
        return after

    def authenticate(self, secret: str) -> TokenInfo | None:
        """The live token whose value is ``secret``, else None. The stored hash is
        compared in constant time. A token issued to a console user is live only while
        that user exists and is enabled. Served from ``self.tokens`` when held there
        (no I/O); a revocation through this store takes effect at once, one made
        elsewhere once the server's mark watch sees it (``revocation_mark``)."""
        digest = hash_token(secret)
        held = self.tokens.get(digest)
        if held is not None:
            return held
        generation = self.tokens.generation()
        token = self._authenticate(digest)
        if token is not None:
            self.tokens.put(digest, token, generation)
        return token

    def cached_token(self, secret: str) -> TokenInfo | None:
        """The live token of ``secret`` if the token cache holds it, else None (not
        known to be live: ask ``authenticate``). No I/O."""
        return self.tokens.get(hash_token(secret))

    def revocation_mark(self) -> int:
        """What moves whenever a token is revoked or a console user disabled, by any
        process: the newest such history row's id (0: none yet). One indexed read."""
        actions = (Action.TOKEN_REVOKE.value, Action.USER_DISABLE.value)
        with self.read() as conn:
            mark = conn.execute(
                select(func.max(t.history.c.id)).where(t.history.c.action.in_(actions))
            ).scalar()
        return int(mark or 0)

    def _authenticate(self, digest: str) -> TokenInfo | None:
        users = t.console_users
        with self.read() as conn:
            row = conn.execute(
                select(t.tokens, users.c.name.label("owner"), users.c.disabled.label("owner_off"))
                .outerjoin(users, users.c.name == t.tokens.c.user_name)
                .where(t.tokens.c.token_hash == digest)
            ).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        if row.revoked_at is not None:
            return None
        if row.user_name is not None and (row.owner is None or row.owner_off):
            return None
        return self._token_from_row(row)
