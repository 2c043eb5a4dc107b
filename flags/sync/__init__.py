"""Change propagation between the flag store, server replicas and SDKs.

Three paths carry a committed change to an SDK, in order of preference:

* ``redis_pubsub``: the server publishes every committed change on
  ``<prefix>changes:<environment>`` (prefix ``flagrail:``) after the commit;
  SDKs and other server replicas subscribe.
* ``sse``: ``GET /sdk/v1/stream``, fed on the server by ``broadcast``.
* ``poll``: ``GET /sdk/v1/snapshot`` with ``If-None-Match``, when neither is live.

Whatever the path, a change carries the environment version it produced; a
receiver applies it only when it is the next version and otherwise resyncs from
a full snapshot, so a lost, duplicated or reordered message never leaves an SDK
in a state the server never had. ``backup`` keeps the last applied snapshot on
disk for a start without the server.

SDK instances report the version they applied (``InstanceReport``) over Redis
when they have it, else over HTTP; that is how a kill is confirmed.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flags.errors import ValidationError
from flags.model import FlagChanged, Snapshot

__all__ = ["Backoff", "ChangeFeed", "ChangeSink", "InstanceReport", "channel_name"]

DEFAULT_PREFIX = "flagrail:"


def channel_name(prefix: str, kind: str, environment: str) -> str:
    """``<prefix><kind>:<environment>``, e.g. ``flagrail:changes:production``."""
    return f"{prefix}{kind}:{environment}"


class Backoff:
    """Reconnect delays: exponential from ``base`` to ``cap`` seconds, with full jitter
    (a delay drawn uniformly from [d/2, d]), so restarted replicas do not stampede.

    Not thread-safe: one per reconnecting loop.
    """

    def __init__(self, base: float = 0.1, cap: float = 5.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling up to ``cap``."""
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """After a success: the next failure waits ``base`` again."""
        self.attempt = 0


class ChangeSink(Protocol):
    """What a feed delivers to (the SDK's ``FlagClient``, or the server's broadcaster)."""

    def receive_snapshot(self, snapshot: Snapshot, source: str) -> None:
        """A whole snapshot arrived (a stream's first event, or a resync)."""

    def receive_change(self, event: FlagChanged, source: str) -> None:
        """One change arrived; the sink checks that it is the next version."""

    def request_resync(self, why: str) -> None:
        """Something was lost or unreadable: fetch a whole snapshot soon."""


class ChangeFeed(Protocol):
    """A background source of changes for one sink. ``start()`` returns at once."""

    @property
    def live(self) -> bool:
        """True while connected and delivering (a caller may then skip polling)."""

    def start(self) -> None: ...

    def close(self) -> None:
        """Stop; returns within about a second. Idempotent."""


@dataclass(frozen=True, slots=True)
class InstanceReport:
    """One SDK instance saying which environment version it applied.

    Sent after every applied update and with every metrics report. ``interval``
    is the instance's report interval in seconds (it counts as live for three of
    them); ``closed`` says it is going away.
    """

    instance_id: str
    environment: str
    host: str
    pid: int
    app: str | None
    applied_version: int
    interval: float = 10.0
    closed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "environment": self.environment,
            "host": self.host,
            "pid": self.pid,
            "app": self.app,
            "applied_version": self.applied_version,
            "interval": self.interval,
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceReport:
        """Parse a report. Raises ``ValidationError`` naming the bad field."""
        if not isinstance(data, Mapping):
            raise ValidationError("an instance report must be a JSON object", field="instance")

        def text(name: str, limit: int, *, optional: bool = False) -> str | None:
            value = data.get(name)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not 0 < len(value) <= limit:
                raise ValidationError(
                    f"{name} must be a string of 1 to {limit} characters, got {value!r:.60}",
                    field=name,
                )
            return value

        pid, version = data.get("pid"), data.get("applied_version")
        interval, closed = data.get("interval", 10.0), data.get("closed", False)
        if type(pid) is not int or pid < 0:
            raise ValidationError("pid must be a non-negative integer", field="pid")
        if type(version) is not int or version < 0:
            raise ValidationError(
                "applied_version must be a non-negative integer", field="applied_version"
            )
        if type(interval) not in (int, float) or not 0 < interval <= 3600:
            raise ValidationError(
                "interval must be a number of seconds in (0, 3600]", field="interval"
            )
        if type(closed) is not bool:
            raise ValidationError("closed must be a boolean", field="closed")
        return cls(
            instance_id=str(text("instance_id", 64)),
            environment=str(text("environment", 40)),
            host=str(text("host", 255)),
            pid=pid,
            app=text("app", 200, optional=True),
            applied_version=version,
            interval=float(interval),
            closed=closed,
        )
