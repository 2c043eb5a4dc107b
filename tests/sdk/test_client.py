"""FlagClient without a server: checks, reasons, counters, updates, thread safety."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from flags import FlagClient
from flags.compiled import compile_snapshot
from flags.model import FlagChanged, FlagState, Reason, Snapshot

SNAPSHOT = {
    "environment": "production",
    "version": 7,
    "flags": {
        "plain": {"enabled": True, "rollout": 100, "version": 3},
        "off": {"enabled": False, "rollout": 100, "version": 1},
        "killed": {"enabled": True, "rollout": 100, "killed": True, "version": 5},
        "half": {"enabled": True, "rollout": 50, "version": 2},
        "listed": {
            "enabled": True,
            "rollout": 0,
            "tenants_on": ["acme"],
            "tenants_off": ["evil"],
            "version": 4,
        },
    },
}


def client() -> FlagClient:
    return FlagClient.from_snapshot(SNAPSHOT)


def streamed() -> FlagClient:
    """A client whose snapshot arrived through the sync path (as a stream delivers it)."""
    c = FlagClient(None, None, "production")
    c.receive_snapshot(Snapshot.from_dict(SNAPSHOT), "stream")
    return c


class TestReasons:
    def test_evaluate__each_shape__names_its_reason(self) -> None:
        """Every reason of the contract comes out of the matching state."""
        c = client()
        assert c.evaluate("killed").reason is Reason.KILLED
        assert c.evaluate("nope", default=True) == c.evaluate("nope", default=True)
        assert c.evaluate("nope", default=True).reason is Reason.MISSING
        assert c.evaluate("nope", default=True).enabled is True
        assert c.evaluate("off", "acme").reason is Reason.DISABLED
        assert c.evaluate("listed", "evil").reason is Reason.TENANT_OFF
        assert c.evaluate("listed", "acme").reason is Reason.TENANT_ON
        assert c.evaluate("half", "someone").reason is Reason.ROLLOUT
        assert c.evaluate("half").reason is Reason.ROLLOUT  # also without a tenant
        assert c.evaluate("plain", 42, default=True).reason is Reason.ERROR  # type: ignore[arg-type]
        assert c.evaluate("plain", 42, default=True).enabled is True  # type: ignore[arg-type]

    def test_evaluate__state_version__carried(self) -> None:
        """An evaluation carries the flag state's version."""
        assert client().evaluate("killed").version == 5

    def test_is_enabled__rollout__half_the_tenants(self) -> None:
        """A 50% rollout lets roughly half of 2,000 tenants in, the same ones each time."""
        c = client()
        on = [t for t in (f"t{i}" for i in range(2000)) if c.is_enabled("half", t)]
        assert 850 < len(on) < 1150
        assert on == [t for t in (f"t{i}" for i in range(2000)) if c.is_enabled("half", t)]

    def test_from_file__snapshot_json__same_answers(self, tmp_path: Path) -> None:
        """from_file reads the body of /sdk/v1/snapshot."""
        path = tmp_path / "snap.json"
        path.write_text(json.dumps(SNAPSHOT))
        c = FlagClient.from_file(path)
        assert c.version == 7 and c.stats()["source"] == "snapshot"
        assert c.is_enabled("plain") and not c.is_enabled("killed")

    def test_client__no_snapshot__caller_default(self) -> None:
        """With neither server, backup nor snapshot, a check answers the default."""
        c = FlagClient(None, None, "production")
        assert c.is_enabled("plain", default=True) is True
        assert c.evaluate("plain").reason is Reason.DEFAULT
        assert c.stats()["source"] == "none" and not c.ready


ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=300),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["plain", "off", "killed", "half", "listed"]),
)


class Unfriendly(str):
    """A str subclass whose comparisons raise: the check must still not raise."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no")

    __hash__ = str.__hash__


@settings(max_examples=400, deadline=None)
@given(key=ANY, tenant=ANY, default=ANY)
def test_is_enabled__any_arguments__never_raises(key: object, tenant: object, default: object):
    """is_enabled and evaluate return a bool / an Evaluation for any key, tenant, default."""
    c = client()
    result = c.is_enabled(key, tenant, default)  # type: ignore[arg-type]
    assert result is True or result is False
    ev = c.evaluate(key, tenant, default)  # type: ignore[arg-type]
    assert ev.enabled is True or ev.enabled is False


def test_is_enabled__hostile_tenant__default_and_counted() -> None:
    """A tenant whose __eq__ raises gives the default, counted as an error."""
    c = client()
    assert c.is_enabled("listed", Unfriendly("acme"), default=True) is True
    assert c.evaluate("listed", Unfriendly("acme")).reason is Reason.ERROR
    assert c.stats()["errors"] >= 2


class TestCounters:
    def test_count__named_counters__accumulate(self) -> None:
        """count() sums per flag and name; counters() reports them."""
        c = client()
        c.count("auth.cache.l2", "reads")
        c.count("auth.cache.l2", "reads", 4)
        c.count("auth.cache.l2", "corrupt_reads", 0.5)
        assert c.counters() == {"auth.cache.l2": {"reads": 5.0, "corrupt_reads": 0.5}}

    def test_count__bad_arguments__dropped_and_counted(self) -> None:
        """Bad keys, names or amounts never raise: they are dropped and counted."""
        c = client()
        c.count(None, "reads")  # type: ignore[arg-type]
        c.count("a", "")
        c.count("a", "reads", float("nan"))
        c.count("a", "reads", "1")  # type: ignore[arg-type]
        assert c.stats()["errors"] == 4
        assert c.counters() in ({}, {"a": {"reads": 0.0}})

    def test_counts__evaluations__per_flag_off_on(self) -> None:
        """Evaluation counts survive a snapshot swap."""
        c = client()
        c.is_enabled("plain")
        c.is_enabled("killed")
        c.load_snapshot(Snapshot.from_dict({**SNAPSHOT, "version": 8}), source="snapshot")
        c.is_enabled("plain")
        assert c.counts()["plain"] == (0, 2) and c.counts()["killed"] == (1, 0)


class TestUpdates:
    def test_receive_change__next_version__applied(self) -> None:
        """The next version is applied; only that flag changes."""
        c = streamed()
        c.receive_change(FlagChanged("production", 8, "plain", FlagState(killed=True)), "stream")
        assert c.version == 8 and not c.is_enabled("plain")
        assert c.evaluate("plain").reason is Reason.KILLED
        assert c.evaluate("listed", "acme").reason is Reason.TENANT_ON

    def test_receive_change__old_version__ignored(self) -> None:
        """A duplicate or older change changes nothing and is no resync."""
        c = streamed()
        c.receive_change(FlagChanged("production", 7, "plain", FlagState(killed=True)), "redis")
        assert c.is_enabled("plain") and c.stats()["resyncs"] == 0

    def test_receive_change__gap__resync_counted(self) -> None:
        """A version gap is not applied; it asks for a resync (counted)."""
        c = streamed()
        c.receive_change(FlagChanged("production", 9, "plain", FlagState(killed=True)), "redis")
        assert c.version == 7 and c.is_enabled("plain")
        assert c.stats()["resyncs"] == 1

    def test_receive_change__archived__flag_missing(self) -> None:
        """A change with no state removes the flag: it becomes missing."""
        c = streamed()
        c.receive_change(FlagChanged("production", 8, "plain", None), "stream")
        assert c.evaluate("plain", default=True).reason is Reason.MISSING

    def test_receive_snapshot__older_than_applied__ignored(self) -> None:
        """A late snapshot older than what is applied does not roll the client back."""
        c = streamed()
        c.receive_snapshot(Snapshot("production", 3, {}), "poll")
        assert c.version == 7 and c.is_enabled("plain")

    def test_with_change__equals_full_compile(self) -> None:
        """Recompiling one flag gives the same answers as compiling the whole snapshot."""
        snap = Snapshot.from_dict(SNAPSHOT)
        changed = FlagState(enabled=True, rollout=30, tenants_off=frozenset({"acme"}), version=9)
        inc = compile_snapshot(snap).with_change(8, "listed", changed, {})
        full = compile_snapshot(Snapshot("production", 8, {**snap.flags, "listed": changed}))
        assert inc.version == full.version == 8
        a, b = FlagClient(None, None, "production"), FlagClient(None, None, "production")
        a.load_snapshot(inc.snapshot, source="snapshot")
        b.load_snapshot(full.snapshot, source="snapshot")
        for tenant in [None, "acme", "evil", *(f"t{i}" for i in range(200))]:
            for key in snap.flags:
                assert a.evaluate(key, tenant) == b.evaluate(key, tenant)

    def test_on_change__callback_raises__others_still_called(self) -> None:
        """A failing callback is logged; the next one still runs."""
        c = client()
        seen: list[int] = []

        def bad(_c: FlagClient, _s: Snapshot) -> None:
            raise RuntimeError("boom")

        c.on_change(bad)
        remove = c.on_change(lambda _c, s: seen.append(s.version))
        c.load_snapshot(Snapshot("production", 8, {}), source="snapshot")
        remove()
        c.load_snapshot(Snapshot("production", 9, {}), source="snapshot")
        assert seen == [8]


def test_client__eight_threads_during_updates__only_whole_snapshots() -> None:
    """8 threads evaluating while updates arrive see whole snapshots: every flag of what
    they read belongs to one version, and versions never go backwards."""
    keys = [f"f{i}" for i in range(50)]

    def snapshot_at(version: int) -> Snapshot:
        on = version % 2 == 0
        return Snapshot(
            "production",
            version,
            {k: FlagState(enabled=on, rollout=100, version=version) for k in keys},
        )

    c = FlagClient(None, None, "production")
    c.load_snapshot(snapshot_at(0), source="snapshot")
    stop = threading.Event()
    failures: list[str] = []

    def reader() -> None:
        try:
            read_until_stopped()
        except Exception as exc:  # a crashed reader is a failure, not a quiet thread
            failures.append(f"reader raised {exc!r}")

    def read_until_stopped() -> None:
        last = -1
        while not stop.is_set():
            table = c._table  # one read: what a check sees
            versions = {cf.state.version for cf in table.values()}
            answers = {cf.fixed for cf in table.values()}
            if len(versions) != 1 or len(answers) != 1:
                failures.append(f"mixed snapshot {versions} {answers}")
            (version,) = versions
            if version < last:
                failures.append(f"went back from {last} to {version}")
            last = version
            for k in keys[:5]:
                c.is_enabled(k, "tenant")
                c.evaluate(k)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for t in threads:
        t.start()
    for version in range(1, 301):
        if version % 3 == 0:
            c.load_snapshot(snapshot_at(version), source="snapshot")
        else:
            # A whole-snapshot swap through the sync path too.
            c.receive_snapshot(snapshot_at(version), "stream")
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert failures == []
    assert c.version == 300
