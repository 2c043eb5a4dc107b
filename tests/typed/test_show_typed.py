"""A typed flag's variants are visible where a person looks (#19): ``GET
/admin/flags/{key}`` and ``flagrail flags show`` carry its type, its declared variants,
the off/on variants a new environment starts with, and per environment its
``on_variant``, ``off_variant``, ``split`` and pinned tenants. A boolean flag's form
keeps the shape of earlier releases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flags.store.sql import SqlFlagStore
from tests.api.conftest import Api, open_client
from tests.cli.test_cli import Cli, Server, server  # noqa: F401

KEY = "prices.tier"
VARIANTS = [
    {"name": "bronze", "value": "b"},
    {"name": "silver", "value": "s"},
    {"name": "gold", "value": 'g "1"'},
]
PRODUCTION = {
    "enabled": True,
    "rollout": 100,
    "on_variant": "gold",
    "split": {"gold": 200, "silver": 800},
    "tenant_variants": {
        "acme": "silver",
        "initech": "gold",
        "globex": "bronze",
        "umbrella": "gold",
    },
}


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    store = SqlFlagStore(database_url)
    with open_client(database_url, store) as client:
        yield Api(client, store, database_url)


def set_up(api: Api) -> None:
    """The typed flag, production set as in PRODUCTION, new environments serving silver."""
    api.create_flag(KEY, type="string", variants=VARIANTS, off_variant="bronze")
    response = api.patch(f"/admin/flags/{KEY}/environments/production", json=PRODUCTION)
    assert response.status_code == 200, response.text
    response = api.patch(f"/admin/flags/{KEY}", json={"on_variant": "silver"})
    assert response.status_code == 200, response.text


def test_get_flag__typed__type_variants_initial_and_every_environment_state(api: Api) -> None:
    set_up(api)
    assert api.post("/admin/environments", json={"name": "eu-west"}).status_code == 201
    flag = api.get(f"/admin/flags/{KEY}").json()
    assert flag["type"] == "string"
    assert flag["variants"] == VARIANTS
    assert (flag["off_variant"], flag["on_variant"]) == ("bronze", "silver")
    production = flag["environments"]["production"]
    assert production["on_variant"] == "gold"
    assert production["off_variant"] == "bronze"
    assert production["split"] == [
        {"variant": "gold", "weight": 200},
        {"variant": "silver", "weight": 800},
    ]
    assert production["tenant_variants"] == PRODUCTION["tenant_variants"]
    # An environment made after the flag's update starts with its initial variants.
    eu = flag["environments"]["eu-west"]
    assert (eu["off_variant"], eu["on_variant"], eu["split"], eu["tenant_variants"]) == (
        "bronze",
        "silver",
        [],
        {},
    )
    # The flag list and a state change answer the same flag form.
    listed = api.get("/admin/flags").json()["items"]
    assert [f for f in listed if f["key"] == KEY] == [flag]


def test_get_flag__boolean__form_of_earlier_releases(api: Api) -> None:
    api.create_flag("plain.flag")
    flag = api.get("/admin/flags/plain.flag").json()
    assert not {"type", "variants", "off_variant", "on_variant"} & set(flag)
    assert not {"off_variant", "on_variant", "split", "tenant_variants"} & set(
        flag["environments"]["production"]
    )


def test_cli_flags_show__typed__variants_initial_states_and_pins(
    flagrail: Cli, database_url: str
) -> None:
    store = SqlFlagStore(database_url)
    with open_client(database_url, store) as client:
        set_up(Api(client, store, database_url))
    shown = flagrail("flags", "show", KEY)
    assert shown.code == 0, shown
    lines = shown.out.splitlines()
    assert lines[0].startswith(f"{KEY}  (string; release")
    assert 'variants: bronze="b", silver="s", gold="g \\"1\\""' in lines
    assert "new environments: serve silver; off bronze" in lines
    (production,) = [line for line in lines if line.startswith("production ")]
    assert "gold; split gold=200,silver=800; off bronze; 4 pinned" in production
    (staging,) = [line for line in lines if line.startswith("staging ")]
    assert "  bronze; off bronze" in staging
    assert "pinned in production: acme=silver, globex=bronze, initech=gold (+1 more)" in lines
    assert not [line for line in lines if line.startswith("pinned in staging")]

    as_json: dict[str, Any] = flagrail("flags", "show", KEY, "--json").json()
    assert (as_json["off_variant"], as_json["on_variant"]) == ("bronze", "silver")
    assert as_json["environments"]["production"]["tenant_variants"] == PRODUCTION["tenant_variants"]
