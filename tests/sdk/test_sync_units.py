"""Sync building blocks without a server: SSE parsing, backoff, instance reports,
the backup file, and the broadcaster's ordering (on an in-memory snapshot source)."""

from __future__ import annotations

import asyncio
import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flags.errors import ValidationError
from flags.model import Environment, FlagChanged, FlagState, Snapshot
from flags.sync import Backoff, InstanceReport
from flags.sync.backup import read_backup, write_backup
from flags.sync.broadcast import Broadcaster, InstanceRegistry
from flags.sync.sse import SseEvent, format_event, parse_events


class TestSse:
    def test_parse_events__frames_and_comments__events_in_order(self) -> None:
        """Multi-line data is joined, ids kept, comments become heartbeats."""
        lines = [
            "id: 4",
            "event: snapshot",
            'data: {"a":',
            "data: 1}",
            "",
            ": heartbeat",
            "event: change",
            "data:x",
            "",
            "",
        ]
        events = list(parse_events(lines))
        assert events == [
            SseEvent("snapshot", '{"a":\n1}', "4"),
            SseEvent("heartbeat", "heartbeat", None),
            SseEvent("change", "x", "4"),
        ]

    def test_format_event__round_trip__same_data(self) -> None:
        """What the server formats, the parser reads back."""
        frame = format_event("change", {"version": 3, "flag": "f"}, 3).decode()
        (event,) = parse_events(frame.split("\n"))
        assert event.event == "change" and event.id == "3"
        assert json.loads(event.data) == {"version": 3, "flag": "f"}


class TestBackoff:
    def test_next__grows_to_cap__with_jitter(self) -> None:
        """Delays double up to the cap and stay in [ceiling/2, ceiling]; reset starts over."""
        b = Backoff(0.1, 1.0, rng=random.Random(1))
        delays = [b.next() for _ in range(8)]
        ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
        for d, c in zip(delays, ceilings, strict=True):
            assert c / 2 <= d <= c
        b.reset()
        assert b.next() <= 0.1


class TestInstanceReport:
    def test_from_dict__round_trip__equal(self) -> None:
        r = InstanceReport("abc", "production", "web-1", 42, "shop", 17, 10.0, False)
        assert InstanceReport.from_dict(r.to_dict()) == r

    @pytest.mark.parametrize(
        ("field", "value"),
        [("pid", -1), ("applied_version", "7"), ("host", ""), ("interval", 0), ("closed", 1)],
    )
    def test_from_dict__bad_field__names_it(self, field: str, value: object) -> None:
        data = InstanceReport("abc", "production", "h", 1, None, 1).to_dict()
        data[field] = value
        with pytest.raises(ValidationError) as info:
            InstanceReport.from_dict(data)
        assert info.value.field == field


class TestBackup:
    def test_write_backup__read_back__same_snapshot(self, tmp_path: Path) -> None:
        """A written backup reads back equal; no temporary file is left behind."""
        snap = Snapshot("production", 9, {"f": FlagState(enabled=True, rollout=40, version=2)})
        path = tmp_path / "flags.json"
        write_backup(path, snap)
        write_backup(path, Snapshot("production", 10, dict(snap.flags)))
        assert read_backup(path).version == 10
        assert read_backup(path).flags == snap.flags
        assert os.listdir(tmp_path) == ["flags.json"]

    def test_read_backup__garbage__raises_value_error(self, tmp_path: Path) -> None:
        path = tmp_path / "flags.json"
        path.write_text('{"environment": 3}')
        with pytest.raises(ValueError):
            read_backup(path)


class MemorySource:
    """An in-memory SnapshotSource: the database as the broadcaster reads it."""

    def __init__(self) -> None:
        self.version = 0
        self.flags: dict[str, FlagState] = {}

    def snapshot(self, env: str) -> Snapshot:
        return Snapshot(env, self.version, dict(self.flags))

    def list_environments(self) -> list[Environment]:
        return [Environment("production", datetime.now(UTC), self.version)]


def change(version: int) -> FlagChanged:
    return FlagChanged("production", version, "f", FlagState(enabled=True, version=version))


class TestBroadcaster:
    def test_publish__out_of_order_and_duplicates__delivered_in_order_once(self) -> None:
        """Events 2, 1, 1, 3 reach a stream as 1, 2, 3."""

        async def scenario() -> list[int]:
            b = Broadcaster(MemorySource(), hold=5.0)
            b.start()
            try:
                sub = b.subscribe("production", asyncio.get_running_loop())
                b.publish([change(2)])
                b.publish([change(1), change(1)])
                b.publish([change(3)])
                got = []
                for _ in range(3):
                    item = await sub.get(2.0)
                    assert isinstance(item, FlagChanged)
                    got.append(item.version)
                return got
            finally:
                b.close()

        assert asyncio.run(scenario()) == [1, 2, 3]

    def test_publish__gap_never_filled__streams_get_a_snapshot(self) -> None:
        """A gap not filled within ``hold`` makes every stream get a fresh snapshot."""
        source = MemorySource()

        async def scenario() -> object:
            b = Broadcaster(source, hold=0.05, db_poll_interval=0.05)
            b.start()
            try:
                sub = b.subscribe("production", asyncio.get_running_loop())
                source.version = 5
                b.publish([change(5)])  # 1..4 never come
                return await sub.get(5.0)
            finally:
                b.close()

        item = asyncio.run(scenario())
        assert isinstance(item, Snapshot) and item.version == 5

    def test_replay__ring_holds_gap__missed_changes_else_none(self) -> None:
        """Replay returns the changes after a version, or None beyond the ring."""
        b = Broadcaster(MemorySource(), ring_size=3)
        b.publish([change(v) for v in range(1, 6)])
        assert [e.version for e in b.replay("production", 3) or []] == [4, 5]
        assert b.replay("production", 5) == []
        assert b.replay("production", 1) is None  # 2 fell out of the ring
        assert b.replay("production", 9) is None


class TestInstanceRegistry:
    def test_wait_applied__lagging_then_applied__confirmed(self) -> None:
        """The wait ends when the last live instance reports the version."""
        reg = InstanceRegistry(None)
        reg.report(InstanceReport("a", "production", "h", 1, None, 5))
        reg.report(InstanceReport("b", "production", "h", 2, None, 4))
        early = reg.wait_applied({"production": 5}, 0.0)
        assert (early.confirmed, early.live) == (1, 2)
        assert [i["instance_id"] for i in early.lagging] == ["b"]
        reg.report(InstanceReport("b", "production", "h", 2, None, 5))
        done = reg.wait_applied({"production": 5}, 1.0)
        assert (done.confirmed, done.live, done.lagging) == (2, 2, [])

    def test_live__closed_or_silent__not_listed(self) -> None:
        """A closed instance, or one silent for three intervals, is not live."""
        reg = InstanceRegistry(None)
        reg.report(InstanceReport("a", "production", "h", 1, None, 5, closed=True))
        old = datetime(2020, 1, 1, tzinfo=UTC)
        reg.report(InstanceReport("b", "production", "h", 2, None, 5), at=old)
        reg.report(InstanceReport("c", "production", "h", 3, "shop", 5))
        assert [i["instance_id"] for i in reg.live("production")] == ["c"]
