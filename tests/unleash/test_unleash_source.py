"""flags.unleash.source: an Unleash server feeding a plain FlagClient.

The client evaluates Unleash features with flagrail's own compiled checks (the
states ``state_from_feature`` reads); the flagrail server's ``/api/client``
endpoints stand in for an Unleash server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from unleash_server import SHAPES, TENANTS, FlagrailServer, populate

from flags.bucketing import in_rollout
from flags.client import FlagClient
from flags.errors import ValidationError
from flags.evaluate import evaluate
from flags.model import FlagState, Reason
from flags.store.telemetry import TelemetryStore
from flags.testing import wait_for
from flags.unleash.mapping import feature_from_state
from flags.unleash.source import UnleashSource, parse_features

FOREIGN = {
    "name": "by-user",
    "enabled": True,
    "strategies": [{"name": "userWithId", "parameters": {"userIds": "a,b"}}],
}


# Flagrail cannot express a rollout hashed on a groupId other than the flag key:
# UnleashClient answers it.
OTHER_GROUP = {
    "name": "other-group",
    "enabled": True,
    "strategies": [
        {
            "name": "flexibleRollout",
            "parameters": {"rollout": "50", "stickiness": "tenantId", "groupId": "shared"},
            "constraints": [],
        }
    ],
}
DISABLED_FOREIGN = {**FOREIGN, "name": "by-user-off", "enabled": False}


class _UnleashHandler(BaseHTTPRequestHandler):
    """The three client API endpoints, serving a fixed payload."""

    payload: bytes = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[str]:
    """A minimal Unleash client API serving foreign features and one flagrail-shaped one."""
    plain = feature_from_state("plain", FlagState(enabled=True, rollout=100))
    features = [OTHER_GROUP, DISABLED_FOREIGN, plain]
    handler = type("Handler", (_UnleashHandler,), {})
    handler.payload = json.dumps({"version": 2, "features": features}).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def source_client(sqlite_server: FlagrailServer) -> Iterator[FlagClient]:
    """A FlagClient built on an UnleashSource directly (what from_unleash does)."""
    populate(sqlite_server.store)
    source = UnleashSource(
        sqlite_server.unleash_url,
        sqlite_server.production,
        "source-test",
        environment="production",
        refresh_interval=1,
        metrics_interval=60,
    )
    client = FlagClient(None, None, "production", source=source).start()
    try:
        yield client
    finally:
        client.close()


class TestParseFeatures:
    def test_parse_features__flagrail_shaped__states_at_the_version(self) -> None:
        """Each feature in flagrail's shape becomes the state it was rendered from."""
        state = FlagState(enabled=True, rollout=30, tenants_on=frozenset({"acme"}))
        raw = json.dumps({"version": 2, "features": [feature_from_state("f.x", state)]})
        snapshot, foreign = parse_features(raw, "production", 7)
        assert (snapshot.environment, snapshot.version, foreign) == ("production", 7, {})
        got = snapshot.flags["f.x"]
        assert (got.enabled, got.rollout, got.tenants_on) == (True, 30, frozenset({"acme"}))

    def test_parse_features__other_shapes__left_out_and_named(self) -> None:
        """A feature flagrail cannot express is not in the snapshot; its name is returned."""
        on = feature_from_state("plain", FlagState(enabled=True, rollout=100))
        raw = json.dumps({"version": 2, "features": [FOREIGN, on, {"no": "name"}]})
        snapshot, foreign = parse_features(raw, "production", 1)
        assert set(snapshot.flags) == {"plain"}
        assert foreign == {"by-user": True}

    @pytest.mark.parametrize("raw", ["not json", "[]", '{"features": {}}'])
    def test_parse_features__not_the_v2_shape__validation_error_naming_features(
        self, raw: str
    ) -> None:
        with pytest.raises(ValidationError) as info:
            parse_features(raw, "production", 1)
        assert info.value.field == "features"

    def test_client__snapshot_without_the_feature__default_with_reason_missing(self) -> None:
        """Without the source that knows it, a foreign feature is just missing."""
        raw = json.dumps({"version": 2, "features": [FOREIGN]})
        client = FlagClient(None, None, "production")
        client.receive_snapshot(parse_features(raw, "production", 1)[0], "unleash")
        ev = client.evaluate("by-user", "a", default=True)
        assert (ev.enabled, ev.reason) == (True, Reason.MISSING)


class TestSourceClient:
    def test_checks__every_shape__the_compiled_rule_on_the_read_states(
        self, source_client: FlagClient
    ) -> None:
        """The client evaluates Unleash features with flagrail's rule: its answers are
        ``evaluate()`` on the states it read, reasons included."""
        assert source_client.ready
        assert type(source_client) is FlagClient  # no Unleash subclass
        for key in SHAPES:
            state = source_client.state(key)
            assert state is not None, key
            for tenant in [None, *TENANTS[:300], *TENANTS[-5:]]:
                assert source_client.evaluate(key, tenant) == evaluate(key, state, tenant)

    def test_close__evaluations__reported_to_the_servers_client_metrics(
        self, sqlite_server: FlagrailServer, source_client: FlagClient
    ) -> None:
        """Evaluation counts reach the server's /api/client/metrics (here, flagrail's
        telemetry) on close, as UnleashClient's own metrics did."""
        on = sum(source_client.is_enabled("rollout-50", t) for t in TENANTS[:1000])
        source_client.close()
        telemetry = TelemetryStore(sqlite_server.store.engine)

        def recorded() -> bool:
            return "production" in telemetry.flag_environments("rollout-50")

        wait_for(recorded, 10.0, "the metrics report in telemetry")
        facts = telemetry.flag_environments("rollout-50")["production"]
        assert 0 < on < 1000
        assert (facts["evaluations_on"], facts["evaluations_off"]) == (on, 1000 - on)

    def test_init__url_and_source__validation_error_naming_source(self) -> None:
        """A client has one source: a server url or a source object, not both."""
        source = UnleashSource("http://127.0.0.1:1/api", "t", "app")
        with pytest.raises(ValidationError) as info:
            FlagClient("http://127.0.0.1:1", "t", "production", source=source)
        assert info.value.field == "source"


def test_from_unleash__foreign_features__answered_by_unleash_client(foreign_server: str) -> None:
    """Features flagrail cannot express are answered by UnleashClient's engine (here a
    rollout hashed on another group), counted; the rest by the compiled rule."""
    client = FlagClient.from_unleash(foreign_server, "token", "foreign-test", send_metrics=False)
    try:
        # A disabled feature is off whatever its strategies: flagrail reads it.
        assert client.ready and client.flag_keys() == ["by-user-off", "plain"]
        tenants = [f"tenant-{i}" for i in range(300)]
        answers = [client.is_enabled("other-group", t) for t in tenants]
        assert answers == [in_rollout("shared", t, 50) for t in tenants]
        assert client.evaluate("other-group", tenants[0]).reason is Reason.ROLLOUT
        off = client.evaluate("by-user-off", "a", default=True)
        assert (off.enabled, off.reason) == (False, Reason.DISABLED)
        bad = client.evaluate("other-group", "x" * 201, default=True)
        assert (bad.enabled, bad.reason) == (True, Reason.ERROR)
        empty = client.evaluate("other-group", "", default=True)  # "" is no tenant
        assert (empty.enabled, empty.reason) == (False, Reason.ROLLOUT)
        assert client.evaluate("plain", "x").reason is Reason.ROLLOUT
        assert client.evaluate("never-defined", "x").reason is Reason.MISSING
        on = sum(answers) + answers[0]  # evaluate(tenants[0]) counts too; the error does not
        assert client.counts()["other-group"] == (302 - on, on)
    finally:
        client.close()
