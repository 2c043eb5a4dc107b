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

A ``FlagClient`` is fed by one ``SnapshotSource`` (``server.ServerSource`` for a
flagrail server; ``flags.unleash.source.UnleashSource`` for an Unleash server)
and is, to that source, nothing but a ``SnapshotSink``: the source never
touches the client's internals, and nothing here imports ``flags.client``.
"""

from __future__ import annotations

import random
from typing import Protocol

from flags.model import Evaluation, FlagChanged, InstanceReport, Snapshot

__all__ = [
    "Backoff",
    "ChangeFeed",
    "ChangeSink",
    "InstanceReport",
    "SnapshotSink",
    "SnapshotSource",
    "channel_name",
]

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


class SnapshotSink(ChangeSink, Protocol):
    """What a ``SnapshotSource`` sees of the client it feeds (a ``FlagClient``).

    Every method is thread-safe, never raises and never blocks on I/O.
    ``receive_snapshot`` installs a snapshot unless it is older than the one
    applied; ``receive_change`` applies the next version, ignores an old one and
    calls ``request_resync`` on a gap; ``request_resync`` asks the source (its
    ``resync()``) for a whole snapshot.
    """

    @property
    def environment(self) -> str:
        """The environment the client serves; snapshots of another are refused."""

    @property
    def instance_id(self) -> str:
        """This client's id in instance reports (a forked child gets a new one)."""

    def served(self) -> Snapshot | None:
        """The applied snapshot if a source delivered it, else None (nothing yet, a
        backup, or an offline snapshot)."""

    def confirm(self, source: str) -> None:
        """The applied snapshot is still current, as ``source`` says (a 304)."""

    def receive_backup(self, snapshot: Snapshot) -> bool:
        """Serve ``snapshot``, read from a backup, unless something was applied
        meanwhile. True if it was installed."""

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{flag: (off, on)}`` evaluations since the client was created."""

    def counters(self) -> dict[str, dict[str, float]]:
        """App-named counters (``FlagClient.count``) since the client was created."""


class SnapshotSource(Protocol):
    """Where a ``FlagClient``'s snapshots come from. One source feeds one client.

    ``start`` is called once, with the client as the sink. A source starts its
    own threads and connections there and documents whether ``start`` blocks.
    """

    def start(self, sink: SnapshotSink) -> None:
        """Begin feeding ``sink``."""

    def close(self) -> None:
        """Stop feeding; may send last reports. Idempotent; blocks a few seconds at most."""

    def resync(self) -> None:
        """Fetch a whole snapshot soon (the sink saw a gap or an unreadable message)."""

    def applied(self) -> None:
        """Called by the sink, under its update lock, after each applied update: cheap."""

    def live(self) -> str | None:
        """The push channel currently delivering (``"redis"``, ``"stream"``), else None."""

    def evaluate_foreign(self, key: str, tenant: object, default: bool) -> Evaluation | None:
        """Answer ``key``, which the snapshot does not hold, if this source knows it in a
        shape flagrail cannot express (an Unleash strategy of its own); else None (the
        flag is missing). In process only: never blocks, never does I/O."""

    def after_fork(self) -> SnapshotSource | None:
        """In a forked child: let go of the parent's threads and sockets, and return a
        new, unstarted source with the same settings (None: the child does not sync)."""
