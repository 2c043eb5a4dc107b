"""The exam platform's API keys: stored as hashes in a SQL database (SQLite for the demo).

A key belongs to one tenant and carries scopes (``exams:read``, ``exams:write``,
``dashboard:read``). Only the SHA-256 of a key is stored. Revoking a key stamps
``revoked_at`` and appends a row to ``key_events``; every service process
follows that table (``events_since``), so a revocation reaches each process's
in-memory cache even when Redis, the usual invalidation channel, is down.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    update,
)

from flags.errors import NotFoundError

__all__ = [
    "SCOPES",
    "KeyRecord",
    "KeyStore",
    "hash_key",
    "new_key_secret",
]

SCOPES = ("exams:read", "exams:write", "dashboard:read")
KEY_PREFIX = "exk_"

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("tenant", String(200), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

key_events = Table(
    "key_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key_hash", String(64), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("at", Float, nullable=False),
)


def hash_key(secret: str) -> str:
    """SHA-256 hex of an API key: the only form in which keys are stored or cached."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What authentication needs to know about a key. Equal records are interchangeable,
    which is what cache verification compares."""

    key_id: str
    tenant: str
    scopes: tuple[str, ...]
    revoked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "tenant": self.tenant,
            "scopes": list(self.scopes),
            "revoked": self.revoked,
        }

    @classmethod
    def from_dict(cls, data: Any) -> KeyRecord:
        """Raises ``ValueError`` for anything ``to_dict`` did not produce."""
        if not isinstance(data, dict):
            raise ValueError("a key record must be a JSON object")
        key_id, tenant, scopes = data.get("key_id"), data.get("tenant"), data.get("scopes")
        revoked = data.get("revoked", False)
        if not isinstance(key_id, str) or not isinstance(tenant, str):
            raise ValueError("key_id and tenant must be strings")
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError("scopes must be a list of strings")
        if type(revoked) is not bool:
            raise ValueError("revoked must be a boolean")
        return cls(key_id, tenant, tuple(scopes), revoked)


def make_engine(url: str) -> Engine:
    """A small pooled engine; SQLite in WAL mode so readers never wait for the writer."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 10}, pool_size=8
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
        cur.close()

    return engine


class KeyStore:
    """API keys in a SQL database. Thread-safe; constructing it does no I/O."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)

    def create_schema(self) -> None:
        """Create the tables if missing (the demo's own database, never a shared one)."""
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def add_key(
        self, tenant: str, scopes: Sequence[str] = SCOPES, *, secret: str | None = None
    ) -> tuple[str, str]:
        """Issue a key for ``tenant``; returns ``(key_id, secret)`` (the secret is not stored)."""
        secret = secret or new_key_secret()
        key_id = secrets.token_hex(8)
        with self.engine.begin() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    key_hash=hash_key(secret),
                    tenant=tenant,
                    scopes=list(scopes),
                    created_at=time.time(),
                    revoked_at=None,
                )
            )
        return key_id, secret

    def add_keys(self, rows: Iterable[tuple[str, str, str, Sequence[str]]]) -> None:
        """Bulk insert ``(key_id, tenant, secret, scopes)`` rows in one transaction (set-up)."""
        now = time.time()
        values = [
            {
                "id": key_id,
                "key_hash": hash_key(secret),
                "tenant": tenant,
                "scopes": list(scopes),
                "created_at": now,
                "revoked_at": None,
            }
            for key_id, tenant, secret, scopes in rows
        ]
        if values:
            with self.engine.begin() as conn:
                conn.execute(insert(api_keys), values)

    def lookup(self, key_hash: str) -> KeyRecord | None:
        """The record of the key with this hash (revoked ones too), or None if unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    api_keys.c.id, api_keys.c.tenant, api_keys.c.scopes, api_keys.c.revoked_at
                ).where(api_keys.c.key_hash == key_hash)
            ).first()
        if row is None:
            return None
        return KeyRecord(row.id, row.tenant, tuple(row.scopes), row.revoked_at is not None)

    def revoke(self, key_id: str) -> tuple[str, float]:
        """Revoke ``key_id``; returns ``(key_hash, committed_at)`` where ``committed_at``
        is the unix time right after the commit. Idempotent. Raises ``NotFoundError``."""
        with self.engine.begin() as conn:
            row = conn.execute(
                select(api_keys.c.key_hash, api_keys.c.revoked_at).where(api_keys.c.id == key_id)
            ).first()
            if row is None:
                raise NotFoundError(f"key {key_id!r} does not exist", field="key_id")
            now = time.time()
            if row.revoked_at is None:
                conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))
                conn.execute(
                    insert(key_events).values(key_hash=row.key_hash, kind="revoke", at=now)
                )
        return row.key_hash, time.time()

    def last_event_id(self) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(select(key_events.c.id).order_by(key_events.c.id.desc())).first()
        return int(value[0]) if value else 0

    def events_since(self, event_id: int) -> list[tuple[int, str]]:
        """``(id, key_hash)`` of every key event after ``event_id``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(key_events.c.id, key_events.c.key_hash)
                .where(key_events.c.id > event_id)
                .order_by(key_events.c.id)
            ).all()
        return [(int(r.id), str(r.key_hash)) for r in rows]
