"""The webhook tables' SQL: subscriptions, the outbox fan-out, claiming deliveries
with a lease, recording outcomes, the delivery log and redelivery.

Ordering contract: ``fan_out`` turns outbox rows into deliveries in history-id
order, one fan-out at a time (a PostgreSQL advisory lock; SQLite has one writer),
and on PostgreSQL only rows below a settled horizon: no history write that drew a
lower id can still commit (``flags.store.history.HISTORY_WRITE_LOCK``),
and ``claim`` only ever hands out the lowest-sequence pending delivery of each
subscription, never while another worker's lease on it is live. So a
subscription's deliveries are sent one after another in ``sequence`` order; a
worker that dies mid-send leaves a lease that expires, and the next claim takes
the delivery over (at least once: the receiver may see it twice, same id).

Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (replicas never wait on each
other) and a compare-and-set update on SQLite (one writer at a time).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, text, update

from api.webhooks import tables as t
from api.webhooks.events import WebhookEvent, event_from_history, receives, standard_payload
from api.webhooks.model import Format, Subscription, SubscriptionSpec
from api.webhooks.signing import generate_secret
from api.webhooks.slack import slack_message
from flags.errors import NotFoundError, ValidationError
from flags.history import Actor, utc
from flags.store.history import HISTORY_WRITE_LOCK, record_change
from flags.store.tables import history, plans, tokens
from flags.store.writes import write_transaction

__all__ = [
    "Claim",
    "DeliveryRecord",
    "Outcome",
    "Status",
    "WebhookStore",
]

# The advisory lock key that makes one fan-out run at a time on PostgreSQL.
FANOUT_LOCK = 0x666C6167_77680001 & 0x7FFFFFFFFFFFFFFF
# The first this many bytes of a response body are kept in the delivery log.
BODY_KEEP = 1024
MAX_LOG_PAGE = 500
# While history writes hold their lock, a fan-out tries this many times, this many
# seconds apart, before leaving it to the next pass (which comes an idle pause later).
HORIZON_TRIES = 5
HORIZON_PAUSE = 0.002


class Status:
    """Delivery statuses (stored strings)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery a worker holds the lease of, with what it needs to send it."""

    id: int
    subscription_id: str
    sequence: int
    url: str
    secret: str
    body: str
    attempts: int
    event_at: datetime
    created_at: datetime
    msg_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt at a claimed delivery came to (see ``WebhookStore.record_all``)."""

    claim: Claim
    status: str
    response_code: int | None
    error: str | None
    response_body: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One row of a subscription's delivery log."""

    id: int
    sequence: int
    event_type: str
    status: str
    attempts: int
    response_code: int | None
    last_error: str | None
    response_body: str | None
    created_at: datetime
    next_attempt_at: datetime
    delivered_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sequence": self.sequence,
            "event_type": self.event_type,
            "status": self.status,
            "attempts": self.attempts,
            "response_code": self.response_code,
            "last_error": self.last_error,
            "response_body": self.response_body,
            "created_at": self.created_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat(),
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
        }


def msg_id(subscription_id: str, sequence: int) -> str:
    """The ``webhook-id`` of a delivery: the same on every attempt and redelivery."""
    return f"msg_{sequence}_{subscription_id}"


def _subscription(row: Any) -> Subscription:
    spec = SubscriptionSpec(
        url=row["url"],
        events=tuple(row["events"]),
        environments=tuple(row["environments"]) if row["environments"] is not None else None,
        flags=tuple(row["flags"]) if row["flags"] is not None else None,
        format=Format(row["format"]),
        description=row["description"],
    )
    return Subscription(
        id=row["id"],
        spec=spec,
        paused=bool(row["paused"]),
        created_at=utc(row["created_at"]),
        created_by=row["created_by"],
        scope=tuple(row["scope"]) if row["scope"] is not None else None,
        admin=bool(row["admin"]),
        updated_at=utc(row["updated_at"]),
    )


def _spec_values(spec: SubscriptionSpec) -> dict[str, Any]:
    return {
        "url": spec.url,
        "events": list(spec.events),
        "environments": list(spec.environments) if spec.environments is not None else None,
        "flags": list(spec.flags) if spec.flags is not None else None,
        "format": spec.format.value,
        "description": spec.description,
    }


class WebhookStore:
    """Webhook persistence over one SQLAlchemy engine (the server's). Thread-safe:
    every method runs its own transaction. Constructing it does no I/O."""

    def __init__(self, engine: Engine, *, base_url: str | None = None) -> None:
        self.engine = engine
        self.base_url = base_url
        self.postgres = engine.dialect.name == "postgresql"

    def _any(self, query: Any) -> bool:
        """Whether ``query`` finds a row, read without a write lock."""
        with self.engine.connect() as conn:
            return conn.execute(query).first() is not None

    # ------------------------------------------------------------ subscriptions
    def any_subscription(self) -> bool:
        """Whether at least one subscription exists (paused ones count)."""
        return self._any(select(t.webhook_subscriptions.c.id).limit(1))

    def create(
        self,
        spec: SubscriptionSpec,
        *,
        created_by: str,
        scope: Sequence[str] | None,
        admin: bool,
        actor: str | Actor | None = None,
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> tuple[Subscription, str]:
        """Store a subscription and its history row (``webhook.create``, without the
        secret); returns it and its signing secret (shown once)."""
        now = now or datetime.now(UTC)
        secret = generate_secret()
        sub_id = "wh_" + secrets.token_hex(8)
        with write_transaction(self.engine) as conn:
            conn.execute(
                insert(t.webhook_subscriptions).values(
                    id=sub_id,
                    secret=secret,
                    paused=False,
                    scope=list(scope) if scope is not None else None,
                    admin=admin,
                    created_at=now,
                    created_by=created_by,
                    updated_at=now,
                    **_spec_values(spec),
                )
            )
            sub = self._get(conn, sub_id)
            _history(conn, actor or created_by, "webhook.create", None, sub, request_id)
        return sub, secret

    def get(self, sub_id: str) -> Subscription:
        """Raises ``NotFoundError`` (field ``id``) for an unknown id."""
        with self.engine.connect() as conn:
            return self._get(conn, sub_id)

    @staticmethod
    def _get(conn: Connection, sub_id: str) -> Subscription:
        row = (
            conn.execute(
                select(t.webhook_subscriptions).where(t.webhook_subscriptions.c.id == sub_id)
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFoundError(f"webhook {sub_id!r} not found", field="id")
        return _subscription(row)

    def list(self) -> list[Subscription]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(t.webhook_subscriptions).order_by(t.webhook_subscriptions.c.created_at)
            ).mappings()
            return [_subscription(r) for r in rows]

    def update(
        self,
        sub_id: str,
        spec: SubscriptionSpec,
        *,
        actor: str | Actor = "system",
        request_id: str | None = None,
    ) -> Subscription:
        """Replace the subscription's filters, URL and format (deliveries already made
        keep their body), with its history row. Raises ``NotFoundError``."""
        return self._write(sub_id, _spec_values(spec), "webhook.update", actor, request_id)

    def set_paused(
        self,
        sub_id: str,
        paused: bool,
        *,
        actor: str | Actor = "system",
        request_id: str | None = None,
    ) -> Subscription:
        """Pause or resume: a paused subscription keeps collecting deliveries and sends
        them, in order, once resumed. Raises ``NotFoundError``."""
        action = "webhook.pause" if paused else "webhook.resume"
        return self._write(sub_id, {"paused": paused}, action, actor, request_id)

    def delete(
        self, sub_id: str, *, actor: str | Actor = "system", request_id: str | None = None
    ) -> None:
        """Delete the subscription and its deliveries, with its history row. Raises
        ``NotFoundError``."""
        with write_transaction(self.engine) as conn:
            before = self._get(conn, sub_id)
            conn.execute(
                delete(t.webhook_deliveries).where(t.webhook_deliveries.c.subscription_id == sub_id)
            )
            conn.execute(
                delete(t.webhook_subscriptions).where(t.webhook_subscriptions.c.id == sub_id)
            )
            _history(conn, actor, "webhook.delete", before, None, request_id)

    def _write(
        self,
        sub_id: str,
        values: dict[str, Any],
        action: str,
        actor: str | Actor,
        request_id: str | None,
    ) -> Subscription:
        with write_transaction(self.engine) as conn:
            before = self._get(conn, sub_id)
            conn.execute(
                update(t.webhook_subscriptions)
                .where(t.webhook_subscriptions.c.id == sub_id)
                .values(updated_at=datetime.now(UTC), **values)
            )
            after = self._get(conn, sub_id)
            _history(conn, actor, action, before, after, request_id)
        return after

    # ------------------------------------------------------------ fan-out
    def fan_out(self, *, limit: int = 500, now: datetime | None = None) -> int:
        """Turn up to ``limit`` outbox rows, oldest first, into deliveries for every
        subscription that receives them, and delete them, in one transaction.
        Returns how many outbox rows it consumed (0 when another fan-out holds the
        lock). Rows whose history row is gone are dropped."""
        now = now or datetime.now(UTC)
        if not self._any(select(t.webhook_outbox.c.id).limit(1)):
            return 0  # an idle pass takes no lock (on PostgreSQL neither the advisory ones)
        with write_transaction(self.engine) as conn:
            query = (
                select(t.webhook_outbox.c.id, t.webhook_outbox.c.history_id)
                .order_by(t.webhook_outbox.c.history_id)
                .limit(limit)
            )
            if self.postgres:
                if not conn.execute(
                    text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": FANOUT_LOCK}
                ).scalar():
                    return 0
                horizon = self._settled_horizon()
                for _ in range(HORIZON_TRIES - 1):
                    if horizon is not None:
                        break
                    time.sleep(HORIZON_PAUSE)  # a history write is in flight: ~1 ms
                    horizon = self._settled_horizon()
                if horizon is None:
                    return 0
                query = query.where(t.webhook_outbox.c.history_id <= horizon)
            outbox = conn.execute(query).all()
            if not outbox:
                return 0
            ids = [r.history_id for r in outbox]
            rows = (
                conn.execute(
                    select(history, tokens.c.role.label("token_role"))
                    .outerjoin(tokens, tokens.c.id == history.c.token_id)
                    .where(history.c.id.in_(ids))
                    .order_by(history.c.id)
                )
                .mappings()
                .all()
            )
            subs = [
                _subscription(r) for r in conn.execute(select(t.webhook_subscriptions)).mappings()
            ]
            deliveries: list[dict[str, Any]] = []
            if subs:
                kinds = self._plan_kinds(conn, rows)
                for row in rows:
                    plan_id = _plan_id(row)
                    event = event_from_history(
                        row, token_role=row["token_role"], plan_kind=kinds.get(plan_id)
                    )
                    for sub in subs:
                        if receives(sub, event):
                            deliveries.append(self._delivery(sub, event, now))
            if deliveries:
                conn.execute(insert(t.webhook_deliveries), deliveries)
            conn.execute(
                delete(t.webhook_outbox).where(t.webhook_outbox.c.id.in_([r.id for r in outbox]))
            )
            return len(outbox)

    def _settled_horizon(self) -> int | None:
        """The highest outbox history id at or below which no history write is in
        flight (PostgreSQL), from a transaction of its own that holds
        ``HISTORY_WRITE_LOCK`` exclusively for one statement: every id drawn before
        it is committed or rolled back for good, every id drawn after it is higher.
        None when a history write holds the lock now (try again on the next pass)."""
        with self.engine.begin() as conn:
            if not conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": HISTORY_WRITE_LOCK}
            ).scalar():
                return None
            top = conn.execute(select(func.max(t.webhook_outbox.c.history_id))).scalar()
        return int(top) if top is not None else 0

    @staticmethod
    def _plan_kinds(conn: Connection, rows: Sequence[Any]) -> dict[int, str]:
        ids = {p for p in (_plan_id(r) for r in rows) if p is not None}
        if not ids:
            return {}
        found = conn.execute(select(plans.c.id, plans.c.kind).where(plans.c.id.in_(ids)))
        return {r.id: r.kind for r in found}

    def _delivery(self, sub: Subscription, event: WebhookEvent, now: datetime) -> dict[str, Any]:
        if sub.spec.format is Format.SLACK:
            payload = slack_message(event, self.base_url)
        else:
            payload = standard_payload(event)
        return {
            "subscription_id": sub.id,
            "sequence": event.sequence,
            "event_type": event.type[:60],
            "flag": event.flag,
            "environment": event.environment,
            "body": json.dumps(payload, separators=(",", ":"), default=str),
            "status": Status.PENDING,
            "attempts": 0,
            "event_at": event.at,
            "created_at": now,
            "next_attempt_at": now,
        }

    # ------------------------------------------------------------ claims
    def claim(
        self,
        owner: str,
        *,
        lease: timedelta,
        limit: int = 20,
        run_length: int = 1,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Lease due deliveries to ``owner`` until ``now + lease``: the lowest-sequence
        pending delivery of up to ``limit`` (unpaused) subscriptions, each followed by
        up to ``run_length - 1`` due ones after it. The result is grouped by
        subscription, in ``sequence`` order within each group; send a group in that
        order and stop at its first failure."""
        now = now or datetime.now(UTC)
        d, s = t.webhook_deliveries, t.webhook_subscriptions
        d2 = d.alias("d2")
        head = (
            select(func.min(d2.c.sequence))
            .where(d2.c.subscription_id == d.c.subscription_id, d2.c.status == Status.PENDING)
            .scalar_subquery()
        )
        stmt = (
            select(
                d.c.id,
                d.c.subscription_id,
                d.c.sequence,
                d.c.body,
                d.c.attempts,
                d.c.event_at,
                d.c.created_at,
                s.c.url,
                s.c.secret,
            )
            .join(s, s.c.id == d.c.subscription_id)
            .where(
                d.c.status == Status.PENDING,
                s.c.paused == False,  # noqa: E712 (SQL expression)
                d.c.next_attempt_at <= now,
                or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now),
                d.c.sequence == head,
            )
            .order_by(d.c.event_at, d.c.id)
            .limit(limit)
        )
        if self.postgres:
            stmt = stmt.with_for_update(of=d, skip_locked=True)
        until = now + lease
        claims: list[Claim] = []
        cols = [
            d.c.id,
            d.c.subscription_id,
            d.c.sequence,
            d.c.body,
            d.c.attempts,
            d.c.event_at,
            d.c.created_at,
        ]
        if not self._any(
            select(d.c.id).where(d.c.status == Status.PENDING, d.c.next_attempt_at <= now).limit(1)
        ):
            return claims  # an idle pass takes no write lock and no row lock
        with write_transaction(self.engine) as conn:
            for row in conn.execute(stmt).all():
                # The head's lease guards its whole run: while it is live no other
                # worker sees any of this subscription's deliveries as a head.
                run = [row]
                if run_length > 1:
                    run += conn.execute(
                        select(*cols)
                        .where(
                            d.c.subscription_id == row.subscription_id,
                            d.c.status == Status.PENDING,
                            d.c.sequence > row.sequence,
                            d.c.next_attempt_at <= now,
                        )
                        .order_by(d.c.sequence)
                        .limit(run_length - 1)
                    ).all()
                taken = conn.execute(
                    update(d)
                    .where(
                        d.c.id == row.id,
                        d.c.status == Status.PENDING,
                        or_(d.c.lease_expires_at.is_(None), d.c.lease_expires_at < now),
                    )
                    .values(lease_owner=owner, lease_expires_at=until)
                ).rowcount
                if not taken:
                    continue
                if len(run) > 1:
                    conn.execute(
                        update(d)
                        .where(d.c.id.in_([r.id for r in run[1:]]))
                        .values(lease_owner=owner, lease_expires_at=until)
                    )
                claims.extend(
                    Claim(
                        id=r.id,
                        subscription_id=r.subscription_id,
                        sequence=r.sequence,
                        url=row.url,
                        secret=row.secret,
                        body=r.body,
                        attempts=r.attempts,
                        event_at=utc(r.event_at),
                        created_at=utc(r.created_at),
                        msg_id=msg_id(r.subscription_id, r.sequence),
                    )
                    for r in run
                )
        return claims

    def record(
        self,
        claim: Claim,
        owner: str,
        *,
        status: str,
        response_code: int | None,
        error: str | None,
        response_body: str | None,
        next_attempt_at: datetime | None,
        now: datetime | None = None,
    ) -> bool:
        """Record one attempt's outcome and release its lease (``record_all`` of one)."""
        outcome = Outcome(claim, status, response_code, error, response_body, next_attempt_at)
        return self.record_all(owner, [outcome], now=now) == 1

    def record_all(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        *,
        release: Sequence[Claim] = (),
        now: datetime | None = None,
    ) -> int:
        """Record attempts' outcomes and release their leases, in one transaction;
        ``release`` are claims given back unattempted. Each ``status`` is
        ``delivered``, ``failed`` (given up) or ``pending`` (retry at
        ``next_attempt_at``). A delivery whose lease ``owner`` no longer holds (it
        expired and another worker took it over) is left as it is. Returns how many
        outcomes were recorded."""
        now = now or datetime.now(UTC)
        d = t.webhook_deliveries
        recorded = 0
        with write_transaction(self.engine) as conn:
            for o in outcomes:
                values: dict[str, Any] = {
                    "status": o.status,
                    "attempts": d.c.attempts + 1,
                    "response_code": o.response_code,
                    "last_error": o.error[:2000] if o.error else None,
                    "response_body": o.response_body[:BODY_KEEP]
                    if o.response_body is not None
                    else None,
                    "lease_owner": None,
                    "lease_expires_at": None,
                }
                if o.status == Status.DELIVERED:
                    values["delivered_at"] = now
                if o.next_attempt_at is not None:
                    values["next_attempt_at"] = o.next_attempt_at
                recorded += conn.execute(
                    update(d)
                    .where(
                        d.c.id == o.claim.id,
                        d.c.lease_owner == owner,
                        d.c.status == Status.PENDING,
                    )
                    .values(**values)
                ).rowcount
            if release:
                conn.execute(
                    update(d)
                    .where(d.c.id.in_([c.id for c in release]), d.c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires_at=None)
                )
        return recorded

    # ------------------------------------------------------------ log
    def deliveries(
        self,
        sub_id: str,
        *,
        status: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[DeliveryRecord]:
        """A subscription's delivery log, newest sequence first. Raises
        ``NotFoundError`` for an unknown subscription, ``ValidationError`` for a bad
        status or limit."""
        if status is not None and status not in {Status.PENDING, Status.DELIVERED, Status.FAILED}:
            raise ValidationError(
                f"status must be pending, delivered or failed, got {status!r}", field="status"
            )
        if not 1 <= limit <= MAX_LOG_PAGE:
            raise ValidationError(f"limit must be from 1 to {MAX_LOG_PAGE}", field="limit")
        self.get(sub_id)
        d = t.webhook_deliveries
        conditions = [d.c.subscription_id == sub_id]
        if status is not None:
            conditions.append(d.c.status == status)
        if before is not None:
            conditions.append(d.c.sequence < before)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(d).where(and_(*conditions)).order_by(d.c.sequence.desc()).limit(limit)
            ).mappings()
            return [
                DeliveryRecord(
                    id=r["id"],
                    sequence=r["sequence"],
                    event_type=r["event_type"],
                    status=r["status"],
                    attempts=r["attempts"],
                    response_code=r["response_code"],
                    last_error=r["last_error"],
                    response_body=r["response_body"],
                    created_at=utc(r["created_at"]),
                    next_attempt_at=utc(r["next_attempt_at"]),
                    delivered_at=utc(r["delivered_at"]) if r["delivered_at"] else None,
                )
                for r in rows
            ]

    def redeliver(
        self,
        sub_id: str,
        delivery_id: int,
        *,
        actor: str | Actor = "system",
        request_id: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Send a delivery again (same id and body) at the next claim, whatever its
        status; it takes its turn in ``sequence`` order with the subscription's other
        pending deliveries. Raises ``NotFoundError``."""
        now = now or datetime.now(UTC)
        d = t.webhook_deliveries
        with write_transaction(self.engine) as conn:
            done = conn.execute(
                update(d)
                .where(d.c.id == delivery_id, d.c.subscription_id == sub_id)
                .values(
                    status=Status.PENDING,
                    created_at=now,
                    next_attempt_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            ).rowcount
            if not done:
                raise NotFoundError(
                    f"delivery {delivery_id} of webhook {sub_id!r} not found", field="delivery"
                )
            record_change(
                conn,
                actor=actor,
                action="webhook.redeliver",
                after={"id": sub_id, "delivery": delivery_id},
                request_id=request_id,
            )

    def depth(self) -> int:
        """Outbox rows not yet fanned out plus pending deliveries."""
        with self.engine.connect() as conn:
            outbox = conn.execute(select(func.count()).select_from(t.webhook_outbox)).scalar_one()
            pending = conn.execute(
                select(func.count())
                .select_from(t.webhook_deliveries)
                .where(t.webhook_deliveries.c.status == Status.PENDING)
            ).scalar_one()
        return int(outbox) + int(pending)


def _history(
    conn: Connection,
    actor: str | Actor,
    action: str,
    before: Subscription | None,
    after: Subscription | None,
    request_id: str | None,
) -> None:
    """The history row of a subscription change (its public form: never the secret)."""
    record_change(
        conn,
        actor=actor,
        action=action,
        before=before.to_dict() if before is not None else None,
        after=after.to_dict() if after is not None else None,
        request_id=request_id,
    )


def _plan_id(row: Any) -> int | None:
    if not str(row["action"]).startswith("plan."):
        return None
    after = row["after"]
    if isinstance(after, dict) and isinstance(after.get("plan"), int):
        return int(after["plan"])
    return None
