"""SqlFlagStore keeps typed flags (#19) on SQLite and PostgreSQL: type, variants, off/on
variant, split and pinned tenants survive a round trip; variant edits reach every
environment (new snapshot version) with one history row; boolean rows read as before."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import insert, update

from flags.errors import AlreadyExistsError, ConflictError, NotFoundError, ValidationError
from flags.history import HistoryQuery
from flags.model import FlagState, FlagType, StateChange, Variant
from flags.store import tables as t
from flags.store.sql import SqlFlagStore

TIERS = [{"name": "bronze", "value": "b"}, {"name": "silver", "value": "s"}]


BAD_DEFINITIONS: list[tuple[dict[str, Any], str]] = [
    ({"type": "colour"}, "type"),
    (
        {"type": "number", "variants": [{"name": "a", "value": float("nan")}]},
        "variants.0.value",
    ),
    (
        {"type": "string", "variants": [{"name": "a", "value": "x" * 9000}]},
        "variants.0.value",
    ),
    ({"type": "json", "variants": [], "off_variant": "a"}, "variants"),
    ({"type": "string", "variants": TIERS, "off_variant": "nope"}, "off_variant"),
    ({"type": "boolean", "off_variant": "bronze"}, "off_variant"),
]


@pytest.fixture
def store(database_url: str) -> Iterator[SqlFlagStore]:
    s = SqlFlagStore(database_url)
    try:
        yield s
    finally:
        s.close()


def make_tier(store: SqlFlagStore) -> None:
    store.create_flag(
        "prices.tier",
        type="string",
        variants=[*TIERS, {"name": "gold", "value": "g"}],
        off_variant="bronze",
        actor="alice",
    )


class TestCreate:
    def test_create__string_flag__every_environment_serves_the_off_variant(
        self, store: SqlFlagStore
    ) -> None:
        """A typed flag starts disabled everywhere, off and on variant the safe one."""
        make_tier(store)
        record = store.get_flag("prices.tier")
        assert record.flag.type is FlagType.STRING
        assert record.flag.variants[2] == Variant("gold", "g")
        state = record.states["production"]
        assert (state.type, state.off_variant, state.on_variant) == (
            FlagType.STRING,
            "bronze",
            "bronze",
        )
        assert store.snapshot("production").flags["prices.tier"] == state

    def test_create__typed_without_off_variant__422_naming_it(self, store: SqlFlagStore) -> None:
        """The safe value is never implicit."""
        with pytest.raises(ValidationError) as err:
            store.create_flag(
                "n.ttl", type="number", variants=[{"name": "a", "value": 1}], actor="a"
            )
        assert err.value.field == "off_variant"

    def test_create__bad_definition__names_the_field(self, store: SqlFlagStore) -> None:
        """Each bad definition is refused, naming its field, and nothing is written."""
        for kwargs, field in BAD_DEFINITIONS:
            with pytest.raises(ValidationError) as err:
                store.create_flag("bad.flag", actor="a", **{"off_variant": "a", **kwargs})
            assert err.value.field == field, kwargs
        assert [r.flag.key for r in store.list_flags()] == []

    def test_create_environment__typed_flag__starts_with_its_initial_variants(
        self, store: SqlFlagStore
    ) -> None:
        """A new environment's state serves the flag's declared off/on variants."""
        make_tier(store)
        store.create_environment("eu", actor="a")
        state = store.get_state("prices.tier", "eu")
        assert (state.off_variant, state.on_variant, state.enabled) == ("bronze", "bronze", False)


class TestState:
    def test_update_state__split_pins_and_on_variant__round_trip(self, store: SqlFlagStore) -> None:
        """Every typed field of a state change is stored and read back, and versioned."""
        make_tier(store)
        before = store.snapshot("production").version
        change = StateChange(
            enabled=True,
            rollout=100,
            on_variant="gold",
            split=(("gold", 200), ("silver", 800)),
            tenant_variants=(("acme", "silver"),),
        )
        after = store.update_state("prices.tier", "production", change, actor="alice")
        fresh = store.get_state("prices.tier", "production")
        assert fresh == after
        assert fresh.split == (("gold", 200), ("silver", 800))
        assert fresh.tenant_variants == (("acme", "silver"),)
        assert fresh.on_variant == "gold"
        snap = store.snapshot("production")
        assert snap.version == before + 1
        assert FlagState.from_dict(snap.flags["prices.tier"].to_dict()) == fresh
        entry = store.list_history(HistoryQuery(flag="prices.tier", limit=5)).items[0]
        assert entry.before["on_variant"] == "bronze"
        assert entry.after["split"] == [
            {"variant": "gold", "weight": 200},
            {"variant": "silver", "weight": 800},
        ]

    def test_update_state__kill_keeps_typed_fields(self, store: SqlFlagStore) -> None:
        """A kill and its lift change only the kill fields."""
        make_tier(store)
        store.update_state("prices.tier", "production", StateChange(on_variant="gold"), actor="a")
        store.kill("prices.tier", ["production"], reason="incident", actor="a")
        state = store.get_state("prices.tier", "production")
        assert state.killed and state.on_variant == "gold" and state.off_variant == "bronze"

    def test_update_state__undeclared_variant__refused(self, store: SqlFlagStore) -> None:
        """A split over an undeclared variant names the field."""
        make_tier(store)
        with pytest.raises(ValidationError) as err:
            store.update_state(
                "prices.tier", "production", StateChange(split=(("platinum", 1000),)), actor="a"
            )
        assert err.value.field == "split.0.variant"

    def test_update_state__boolean_flag_naming_on_off__no_change(self, store: SqlFlagStore) -> None:
        """A boolean flag's on/off variants are implied: naming them writes nothing."""
        store.create_flag("bool.flag", actor="a")
        after = store.update_state(
            "bool.flag", "beta", StateChange(on_variant="on", off_variant="off"), actor="a"
        )
        assert after == FlagState() and after.version == 0

    def test_boolean_rows__written_before_typed_flags__read_as_boolean(
        self, store: SqlFlagStore
    ) -> None:
        """A row with the migration's defaults (type boolean, null variant columns)
        reads back as the boolean state it was."""
        store.create_flag("old.flag", actor="a")
        with store.transaction() as conn:
            conn.execute(update(t.flags).values(variants=None, off_variant=None))
        state = store.get_state("old.flag", "production")
        assert state == FlagState()
        assert "type" not in state.to_dict()


class TestVariants:
    def test_add_rename_remove__every_environment_follows(self, store: SqlFlagStore) -> None:
        """A rename reaches every use; each edit bumps every environment's version."""
        make_tier(store)
        store.update_state(
            "prices.tier",
            "staging",
            StateChange(split=(("gold", 500), ("silver", 500)), tenant_variants=(("t1", "gold"),)),
            actor="a",
        )
        versions = {e.name: e.version for e in store.list_environments()}
        store.add_variant("prices.tier", "platinum", "p", actor="a")
        store.rename_variant("prices.tier", "gold", "gilded", actor="a")
        record = store.get_flag("prices.tier")
        assert [v.name for v in record.flag.variants] == ["bronze", "silver", "gilded", "platinum"]
        staging = record.states["staging"]
        assert staging.split == (("gilded", 500), ("silver", 500))
        assert staging.tenant_variants == (("t1", "gilded"),)
        assert staging.variant_named("platinum") == Variant("platinum", "p")
        for env in store.list_environments():
            assert env.version == versions[env.name] + 2
        store.remove_variant("prices.tier", "platinum", actor="a")
        assert [v.name for v in store.get_flag("prices.tier").flag.variants] == [
            "bronze",
            "silver",
            "gilded",
        ]
        rows = store.list_history(HistoryQuery(flag="prices.tier", action="flag.update")).items
        assert [len(r.after["variants"]) for r in rows] == [3, 4, 4]
        assert rows[1].before["variants"][2]["name"] == "gold"
        assert rows[1].after["variants"][2]["name"] == "gilded"

    def test_remove__variant_in_use__409_naming_where(self, store: SqlFlagStore) -> None:
        """A served variant cannot be removed; the refusal says where it is served."""
        make_tier(store)
        store.update_state(
            "prices.tier", "production", StateChange(split=(("gold", 1000),)), actor="a"
        )
        with pytest.raises(ConflictError) as err:
            store.remove_variant("prices.tier", "gold", actor="a")
        assert err.value.field == "name" and "production split" in err.value.message
        with pytest.raises(ConflictError) as err:
            store.remove_variant("prices.tier", "bronze", actor="a")
        assert "initial off_variant" in err.value.message

    def test_edits__bad_input__named(self, store: SqlFlagStore) -> None:
        """Unknown, duplicate, badly named or badly typed variants are refused."""
        make_tier(store)
        store.create_flag("bool.flag", actor="a")
        cases = [
            (
                lambda: store.add_variant("prices.tier", "gold", "x", actor="a"),
                AlreadyExistsError,
                "name",
            ),
            (
                lambda: store.add_variant("prices.tier", "-bad", "x", actor="a"),
                ValidationError,
                "name",
            ),
            (lambda: store.add_variant("prices.tier", "p", 3, actor="a"), ValidationError, "value"),
            (lambda: store.add_variant("bool.flag", "p", True, actor="a"), ValidationError, "type"),
            (
                lambda: store.rename_variant("prices.tier", "nope", "x", actor="a"),
                NotFoundError,
                "name",
            ),
            (
                lambda: store.rename_variant("prices.tier", "gold", "silver", actor="a"),
                AlreadyExistsError,
                "new_name",
            ),
            (lambda: store.remove_variant("prices.tier", "nope", actor="a"), NotFoundError, "name"),
        ]
        for call, error, field in cases:
            with pytest.raises(error) as err:
                call()
            assert err.value.field == field

    def test_update_flag__initial_variants__new_environments_start_with_them(
        self, store: SqlFlagStore
    ) -> None:
        """A flag update changes what a new environment starts with, in the history."""
        make_tier(store)
        store.update_flag("prices.tier", {"off_variant": "silver"}, actor="a")
        store.create_environment("eu", actor="a")
        state = store.get_state("prices.tier", "eu")
        assert (state.off_variant, state.on_variant) == ("silver", "bronze")
        row = store.list_history(HistoryQuery(flag="prices.tier", action="flag.update")).items[0]
        assert (row.before["off_variant"], row.after["off_variant"]) == ("bronze", "silver")
        store.create_flag("bool.flag", actor="a")
        for key, name in (("prices.tier", "nope"), ("bool.flag", "on")):
            with pytest.raises(ValidationError) as err:
                store.update_flag(key, {"off_variant": name}, actor="a")
            assert err.value.field == "off_variant"

    def test_set_variant_value__changes_the_served_value(self, store: SqlFlagStore) -> None:
        """A variant's value can change in place (e.g. a new safe value)."""
        store.create_flag(
            "auth.cache.l1.ttl",
            type="number",
            variants=[{"name": "safe", "value": 5}],
            off_variant="safe",
            actor="a",
        )
        store.set_variant_value("auth.cache.l1.ttl", "safe", 2.5, actor="a")
        state = store.snapshot("production").flags["auth.cache.l1.ttl"]
        assert state.variant_named("safe") == Variant("safe", 2.5)


def test_json_values__round_trip(store: SqlFlagStore) -> None:
    """JSON values (nested, unicode, numbers) are stored as given."""
    value = {"limits": [1, 2.5, None], "name": "zürich", "on": True}
    store.create_flag(
        "cfg.blob",
        type="json",
        variants=[{"name": "v1", "value": value}],
        off_variant="v1",
        actor="a",
    )
    assert store.get_flag("cfg.blob").states["beta"].variant_named("v1").value == value


def test_insert_without_typed_columns__defaults_to_boolean(store: SqlFlagStore) -> None:
    """A flags row inserted without the new columns (an older writer) is a boolean flag."""
    store.create_flag("ref.flag", actor="a")
    with store.transaction() as conn:
        row = conn.execute(t.flags.select()).first()
        conn.execute(
            insert(t.flags).values(
                key="legacy.flag",
                description="",
                kind="release",
                owner=None,
                tags=[],
                created_at=row.created_at,
            )
        )
    assert store.get_flag("legacy.flag").flag.type is FlagType.BOOLEAN


def test_migration_0009__rows_written_before__read_as_boolean_flags(tmp_path: Any) -> None:
    """A database holding a flag at 0008, upgraded to the head, reads it as the boolean
    flag it was, and takes typed flags beside it."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from flags.store.schema import alembic_config, upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config = alembic_config(url)
            config.attributes["connection"] = conn
            command.upgrade(config, "0008_telemetry_tokens")
            now = "2026-12-01 00:00:00"
            conn.execute(
                text(
                    "INSERT INTO flags (key, description, kind, owner, tags, created_at, archived)"
                    f" VALUES ('old.flag', '', 'release', NULL, '[]', '{now}', 0)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO flag_states (flag_key, environment, enabled, rollout, tenants_on,"
                    " tenants_off, killed, version, updated_at) VALUES ('old.flag', 'production',"
                    f" 1, 40, '[\"acme\"]', '[]', 0, 2, '{now}')"
                )
            )
    finally:
        engine.dispose()
    upgrade(url)
    store = SqlFlagStore(url)
    try:
        record = store.get_flag("old.flag")
        assert record.flag.type is FlagType.BOOLEAN
        state = record.states["production"]
        assert (state.enabled, state.rollout, state.tenants_on, state.version) == (
            True,
            40,
            frozenset({"acme"}),
            2,
        )
        assert state.to_dict().keys() == FlagState().to_dict().keys()
        make_tier(store)
        assert store.snapshot("production").flags["prices.tier"].type is FlagType.STRING
    finally:
        store.close()
