"""flags.unleash: the flagrail SDK fed by an Unleash server (``UnleashSource``).

No Unleash server runs on this machine; the flagrail server's ``/api/client``
endpoints are one (the Unleash client API), so UnleashClient reads them here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from unleash_server import (
    OFF,
    ON,
    SHAPES,
    STAGING_ONLY,
    TENANTS,
    FlagrailServer,
    populate,
)

from flags.client import FlagClient
from flags.errors import ValidationError
from flags.model import Reason, Snapshot
from flags.testing import wait_for
from flags.testing.redis_server import free_port
from flags.unleash.client import UnleashFlagClient


@pytest.fixture
def reader(sqlite_server: FlagrailServer) -> Iterator[FlagClient]:
    """An UnleashFlagClient on the production token, polling every second."""
    populate(sqlite_server.store)
    client = UnleashFlagClient(
        sqlite_server.unleash_url,
        sqlite_server.production,
        "reader-test",
        environment="production",
        refresh_interval=1,
    ).start()
    try:
        yield client
    finally:
        client.close()


class TestAnswers:
    def test_evaluate__every_shape__same_answers_as_flagrail(
        self, sqlite_server: FlagrailServer, reader: FlagClient
    ) -> None:
        """Backed by Unleash, the SDK answers what the flagrail snapshot answers."""
        flags = FlagClient.from_snapshot(sqlite_server.sdk_snapshot())
        tenants = [None, *TENANTS[:1500], *TENANTS[-5:]]
        mismatches = [
            (key, tenant)
            for key in [*SHAPES, STAGING_ONLY, "archived", "never-defined"]
            for tenant in tenants
            for default in (False, True)
            if reader.is_enabled(key, tenant, default) is not flags.is_enabled(key, tenant, default)
        ]
        assert mismatches == []

    def test_evaluate__flagrail_shaped_features__reasons_as_flagrail_gives_them(
        self, reader: FlagClient
    ) -> None:
        """Reasons are exact for flagrail-shaped features (a kill reads as disabled)."""
        on, off = sorted(ON - {"tënant-ü"})[0], sorted(OFF - {"ACME Corp"})[0]
        assert reader.evaluate("combo-50", on).reason is Reason.TENANT_ON
        assert reader.evaluate("combo-50", on).enabled is True
        assert reader.evaluate("combo-50", off).reason is Reason.TENANT_OFF
        assert reader.evaluate("combo-50", off).enabled is False
        assert reader.evaluate("combo-50", "tenant-9999").reason is Reason.ROLLOUT
        assert reader.evaluate("rollout-100").reason is Reason.ROLLOUT
        assert reader.evaluate("plain-off", on).reason is Reason.DISABLED
        assert reader.evaluate("killed", "tenant-5").reason is Reason.DISABLED

    def test_evaluate__unknown_or_archived_flag__default_with_reason_missing(
        self, reader: FlagClient
    ) -> None:
        for key in ("never-defined", "archived"):
            for default in (False, True):
                ev = reader.evaluate(key, "tenant-1", default)
                assert (ev.enabled, ev.reason) == (default, Reason.MISSING)

    def test_evaluate__bad_argument__default_with_reason_error_never_raises(
        self, reader: FlagClient
    ) -> None:
        """Bad tenants (too long, not a str, control characters) and bad keys ("" is no
        tenant, not an error: tests/typed/test_unleash_tenants.py)."""
        bad: list[tuple[object, object]] = [
            ("plain-on", "x" * 201),
            ("plain-on", 42),
            ("plain-on", "a\x00b"),
            (None, "t"),
            (["unhashable"], "t"),
        ]
        for key, tenant in bad:
            errors = reader.stats()["errors"]
            ev = reader.evaluate(key, tenant, True)  # type: ignore[arg-type]
            assert (ev.enabled, ev.reason) == (True, Reason.ERROR), (key, tenant)
            assert reader.is_enabled(key, tenant, False) is False  # type: ignore[arg-type]
            assert reader.stats()["errors"] == errors + 2

    def test_snapshot__flagrail_shaped_features__states_and_keys(
        self, sqlite_server: FlagrailServer, reader: FlagClient
    ) -> None:
        """The client's snapshot holds the features as flagrail states."""
        assert reader.ready
        assert reader.flag_keys() == sorted({*SHAPES, STAGING_ONLY})
        state = reader.state("combo-50")
        assert state is not None
        assert (state.rollout, state.tenants_on, state.tenants_off) == (50, ON, OFF)
        stats = reader.stats()
        assert stats["source"] == "unleash"
        assert stats["flags"] == len(SHAPES) + 1

    def test_counts__checks__counted_per_flag(self, reader: FlagClient) -> None:
        """Evaluations count like any FlagClient's (the pytest plugin's coverage reads them)."""
        for tenant in TENANTS[:10]:
            reader.is_enabled("plain-on", tenant)
            reader.is_enabled("rollout-0", tenant)
        counts = reader.counts()
        assert counts["plain-on"] == (0, 10)
        assert counts["rollout-0"] == (10, 0)


class TestUpdates:
    def test_on_change__flag_killed__callback_runs_and_answers_flip(
        self, sqlite_server: FlagrailServer, reader: FlagClient
    ) -> None:
        """A kill arrives with the next poll; on_change runs once the answer changed."""
        seen: list[tuple[bool, Snapshot]] = []
        changed = threading.Event()

        def on_change(client: FlagClient, snapshot: Snapshot) -> None:
            seen.append((client.is_enabled("rollout-100", "tenant-1"), snapshot))
            changed.set()

        reader.on_change(on_change)
        version = reader.version
        assert reader.is_enabled("rollout-100", "tenant-1") is True
        sqlite_server.store.kill("rollout-100", ["production"], reason="incident", actor="t")
        wait_for(changed.is_set, 10.0, "on_change after the kill")
        answer, snapshot = seen[0]
        assert answer is False  # UnleashClient already answers with the new payload
        assert snapshot.version == version + 1
        assert snapshot.flags["rollout-100"].enabled is False
        assert reader.evaluate("rollout-100", "tenant-1").reason is Reason.DISABLED


class TestLifecycle:
    def test_start__unreachable_server__defaults_with_reason_default_never_raises(self) -> None:
        """No server: start() returns, checks give the caller's default."""
        client = UnleashFlagClient(
            f"http://127.0.0.1:{free_port()}/api", "token", "app", request_timeout=1
        ).start()
        try:
            assert client.ready is False
            for default in (False, True):
                ev = client.evaluate("anything", "tenant-1", default)
                assert (ev.enabled, ev.reason) == (default, Reason.DEFAULT)
                assert client.is_enabled("anything", None, default) is default
            assert client.stats()["source"] == "none"  # nothing served yet
        finally:
            client.close()

    def test_start__wrong_token__defaults_never_raises(self, sqlite_server: FlagrailServer) -> None:
        client = UnleashFlagClient(sqlite_server.unleash_url, "not-a-token", "app").start()
        try:
            ev = client.evaluate("plain-on", "tenant-1", True)
            assert (ev.enabled, ev.reason) == (True, Reason.DEFAULT)
        finally:
            client.close()

    @pytest.mark.parametrize(
        ("kwargs", "field"),
        [
            ({"url": "ftp://example.com/api"}, "url"),
            ({"url": ""}, "url"),
            ({"token": ""}, "token"),
            ({"app_name": " "}, "app_name"),
            ({"refresh_interval": 0}, "refresh_interval"),
        ],
        ids=["scheme", "empty-url", "token", "app-name", "interval"],
    )
    def test_init__bad_argument__validation_error_naming_it(
        self, kwargs: dict[str, object], field: str
    ) -> None:
        args: dict[str, object] = {"url": "http://127.0.0.1:1/api", "token": "t", "app_name": "a"}
        args.update(kwargs)
        with pytest.raises(ValidationError) as info:
            UnleashFlagClient(**args)  # type: ignore[arg-type]
        assert info.value.field == field

    def test_close__twice__idempotent_and_last_state_still_answers(
        self, reader: FlagClient
    ) -> None:
        assert reader.is_enabled("plain-on", "tenant-1") is True
        reader.close()
        reader.close()
        assert reader.is_enabled("plain-on", "tenant-1") is True
        assert reader.start() is reader  # a closed client does not start again


def test_from_unleash__flagrail_server__a_started_flag_client(
    sqlite_server: FlagrailServer,
) -> None:
    """``FlagClient.from_unleash`` is the public way in: a started FlagClient."""
    populate(sqlite_server.store)
    client = FlagClient.from_unleash(
        sqlite_server.unleash_url,
        sqlite_server.production,
        "from-unleash-test",
        environment="production",
    )
    try:
        assert isinstance(client, FlagClient)
        assert client.ready
        assert client.is_enabled("plain-on", "tenant-1") is True
        assert client.is_enabled("rollout-0", "tenant-1") is False
        assert client.evaluate("never-defined", "tenant-1", True).reason is Reason.MISSING
        assert client.stats()["source"] == "unleash"
    finally:
        client.close()
