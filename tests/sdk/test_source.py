"""The seam between FlagClient and its snapshot source (flags.sync.SnapshotSource/SnapshotSink).

A recording source shows what the client asks of a source; a recording sink shows
that ``ServerSource`` needs nothing of a client beyond ``SnapshotSink``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from flags.client import FlagClient
from flags.model import Evaluation, FlagChanged, FlagState, Reason, Snapshot
from flags.sync import SnapshotSink
from flags.sync.backup import write_backup
from flags.sync.server import ServerOptions, ServerSource
from flags.testing import wait_for
from flags.testing.redis_server import free_port

ENV = "production"
SNAPSHOT = Snapshot(ENV, 3, {"checkout": FlagState(enabled=True, rollout=100, version=2)})


class RecordingSource:
    """A SnapshotSource double: delivers what the test tells it, records the calls."""

    def __init__(self, live: str | None = None) -> None:
        self.calls: list[str] = []
        self.sink: SnapshotSink | None = None
        self.live_channel = live

    def start(self, sink: SnapshotSink) -> None:
        self.calls.append("start")
        self.sink = sink

    def close(self) -> None:
        self.calls.append("close")

    def resync(self) -> None:
        self.calls.append("resync")

    def applied(self) -> None:
        self.calls.append("applied")

    def live(self) -> str | None:
        return self.live_channel

    def evaluate_foreign(self, key: str, tenant: object, default: bool) -> Evaluation | None:
        return Evaluation(True, Reason.ROLLOUT) if key == "foreign" else None

    def after_fork(self) -> RecordingSource:
        self.calls.append("after_fork")
        return RecordingSource(self.live_channel)


class TestClientWithSource:
    def test_start__source__started_once_with_the_client_as_sink(self) -> None:
        """A client given a source starts it at start(), not in the constructor; once."""
        source = RecordingSource()
        client = FlagClient(None, None, ENV, source=source)
        assert source.calls == []
        assert client.start() is client and client.start() is client
        assert source.calls == ["start"] and source.sink is client

    def test_updates__through_the_sink__applied_counted_and_reported(self) -> None:
        """What the source delivers is served; each install tells the source; a gap
        asks it to resync."""
        source = RecordingSource()
        client = FlagClient(None, None, ENV, source=source).start()
        assert source.sink is not None
        source.sink.receive_snapshot(SNAPSHOT, "poll")
        assert client.evaluate("checkout", "acme").reason is Reason.ROLLOUT
        assert source.sink.served() == SNAPSHOT
        source.sink.receive_change(FlagChanged(ENV, 5, "checkout", FlagState(killed=True)), "poll")
        assert source.calls == ["start", "applied", "resync"]
        assert client.stats()["resyncs"] == 1 and client.version == 3
        source.sink.receive_change(FlagChanged(ENV, 4, "checkout", FlagState(killed=True)), "poll")
        assert client.evaluate("checkout", "acme").reason is Reason.KILLED

    def test_checks__flag_outside_the_snapshot__the_source_answers_it_counted(self) -> None:
        """A key the snapshot lacks goes to the source's evaluate_foreign; None is missing."""
        source = RecordingSource()
        client = FlagClient(None, None, ENV, source=source).start()
        client.load_snapshot(SNAPSHOT, source="test")
        assert client.evaluate("foreign", "acme") == Evaluation(True, Reason.ROLLOUT)
        assert client.is_enabled("foreign", "acme") is True
        assert client.evaluate("other", "acme", default=True).reason is Reason.MISSING
        assert client.counts()["foreign"] == (0, 2)

    def test_stats__live_channel__reported_as_the_source(self) -> None:
        source = RecordingSource(live="stream")
        client = FlagClient(None, None, ENV, source=source).start()
        assert client.stats()["source"] == "stream" and client.stats()["live"] is True
        client.close()
        assert client.stats()["source"] == "none" and client.stats()["live"] is False

    def test_close__twice__source_closed_once_and_never_restarted(self) -> None:
        source = RecordingSource()
        client = FlagClient(None, None, ENV, source=source).start()
        client.close()
        client.close()
        client.start()
        assert source.calls == ["start", "close"]

    def test_restart_after_fork__a_new_source_started_under_a_new_instance_id(self) -> None:
        """What the fork hook runs in a child: the old source lets go, a new one starts."""
        source = RecordingSource()
        client = FlagClient(None, None, ENV, source=source).start()
        before = client.instance_id
        client._restart_after_fork()
        assert source.calls == ["start", "after_fork"]
        assert client.instance_id != before
        assert client.stats()["live"] is False


class RecordingSink:
    """A SnapshotSink that is not a FlagClient: what ServerSource may rely on."""

    def __init__(self) -> None:
        self.backups: list[Snapshot] = []
        self.got_backup = threading.Event()

    @property
    def environment(self) -> str:
        return ENV

    @property
    def instance_id(self) -> str:
        return "recording-sink"

    def served(self) -> Snapshot | None:
        return None

    def confirm(self, source: str) -> None:
        raise AssertionError("nothing to confirm: the server is down")

    def receive_backup(self, snapshot: Snapshot) -> bool:
        self.backups.append(snapshot)
        self.got_backup.set()
        return True

    def receive_snapshot(self, snapshot: Snapshot, source: str) -> None:
        raise AssertionError("no server to deliver a snapshot")

    def receive_change(self, event: FlagChanged, source: str) -> None:
        raise AssertionError("no server to deliver a change")

    def request_resync(self, why: str) -> None:
        pass

    def counts(self) -> dict[str, tuple[int, int]]:
        return {}

    def counters(self) -> dict[str, dict[str, float]]:
        return {}


def test_server_source__server_down__serves_the_backup_through_the_sink(tmp_path: Path) -> None:
    """ServerSource feeds any SnapshotSink: with the server down it hands over the backup."""
    backup = tmp_path / "flags.json"
    write_backup(backup, SNAPSHOT)
    options = ServerOptions(
        url=f"http://127.0.0.1:{free_port()}",
        token="t",
        environment=ENV,
        backup_path=backup,
        poll_interval=0.2,
    )
    source = ServerSource(options)
    sink = RecordingSink()
    source.start(sink)
    try:
        wait_for(sink.got_backup.is_set, 10.0, "the backup handed to the sink")
        assert sink.backups == [SNAPSHOT]
        assert source.live() is None
    finally:
        source.close()
