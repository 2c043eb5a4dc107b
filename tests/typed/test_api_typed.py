"""The admin API on typed flags (#19), through the real app: create a typed flag, edit
its variants, set per-environment variants; 422 naming the field, 409 naming where a
variant is served; the SDK snapshot and its ETag move with every variant change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from flags.store.sql import SqlFlagStore
from tests.api.conftest import Api, open_client

TIER = "prices.tier"
TIER_BODY: dict[str, Any] = {
    "key": TIER,
    "type": "string",
    "variants": [
        {"name": "bronze", "value": "b"},
        {"name": "silver", "value": "s"},
        {"name": "gold", "value": "g"},
    ],
    "off_variant": "bronze",
}


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    """The app in process on a migrated database of this test's own."""
    store = SqlFlagStore(database_url)
    with open_client(database_url, store) as client:
        yield Api(client, store, database_url)


def snapshot(api: Api, env: str = "production") -> tuple[str, dict[str, Any]]:
    response = api.get(f"/sdk/v1/snapshot?environment={env}", token=api.token("client"))
    assert response.status_code == 200, response.text
    return response.headers["ETag"], response.json()


def test_typed_flag__create_set_and_edit_variants__snapshot_follows(api: Api) -> None:
    """The issue's example end to end: gold on, a gold/silver split, a pinned tenant; a
    rename reaches the snapshot under a new ETag; history shows before/after."""
    created = api.create_flag(**TIER_BODY)
    assert created["type"] == "string"
    assert created["environments"]["production"]["off_variant"] == "bronze"
    response = api.patch(
        f"/admin/flags/{TIER}/environments/production",
        json={
            "enabled": True,
            "rollout": 100,
            "on_variant": "gold",
            "split": {"gold": 200, "silver": 800},
            "tenant_variants": {"acme": "silver"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["split"] == [
        {"variant": "gold", "weight": 200},
        {"variant": "silver", "weight": 800},
    ]
    etag, body = snapshot(api)
    assert body["flags"][TIER]["on_variant"] == "gold"

    response = api.patch(f"/admin/flags/{TIER}/variants/gold", json={"name": "platinum"})
    assert response.status_code == 200, response.text
    state = response.json()["environments"]["production"]
    assert state["on_variant"] == "platinum"
    assert state["split"][0] == {"variant": "platinum", "weight": 200}
    new_etag, body = snapshot(api)
    assert new_etag != etag
    assert body["flags"][TIER]["variants"][2] == {"name": "platinum", "value": "g"}

    history = api.get(f"/admin/flags/{TIER}/history?action=flag.update").json()["items"]
    assert history[0]["before"]["variants"][2]["name"] == "gold"
    assert history[0]["after"]["variants"][2]["name"] == "platinum"
    history = api.get(f"/admin/flags/{TIER}/history?action=state.update").json()["items"]
    assert history[0]["before"]["on_variant"] == "bronze"
    assert history[0]["after"]["on_variant"] == "gold"


def test_variants__add_value_remove__and_refusals(api: Api) -> None:
    """Adding, re-valuing and removing a variant; a served variant cannot go (409 naming
    where); unknown variants are 404."""
    api.create_flag(**TIER_BODY)
    response = api.post(f"/admin/flags/{TIER}/variants", json={"name": "iron", "value": "i"})
    assert response.status_code == 201, response.text
    response = api.patch(f"/admin/flags/{TIER}/variants/iron", json={"value": "fe"})
    assert response.json()["variants"][3] == {"name": "iron", "value": "fe"}
    response = api.delete(f"/admin/flags/{TIER}/variants/iron")
    assert response.status_code == 200
    assert [v["name"] for v in response.json()["variants"]] == ["bronze", "silver", "gold"]

    api.patch(f"/admin/flags/{TIER}/environments/beta", json={"on_variant": "gold"})
    response = api.delete(f"/admin/flags/{TIER}/variants/gold")
    assert response.status_code == 409
    error = api.error(response)
    assert error["field"] == "name" and "beta on_variant" in error["message"]
    assert api.delete(f"/admin/flags/{TIER}/variants/nope").status_code == 404
    assert (
        api.post(f"/admin/flags/{TIER}/variants", json={"name": "gold", "value": "x"}).status_code
        == 409
    )


BAD_INPUT: list[tuple[str, str, dict[str, Any], str]] = [
    ("POST", "/admin/flags", {**TIER_BODY, "type": "colour"}, "type"),
    ("POST", "/admin/flags", {**TIER_BODY, "off_variant": None}, "off_variant"),
    ("POST", "/admin/flags", {**TIER_BODY, "off_variant": "lead"}, "off_variant"),
    (
        "POST",
        "/admin/flags",
        {**TIER_BODY, "variants": [{"name": "a", "value": 1}], "off_variant": "a"},
        "variants.0.value",
    ),
    (
        "POST",
        "/admin/flags",
        {
            **TIER_BODY,
            "type": "json",
            "variants": [{"name": "a", "value": {"x": "y" * 40_000}}],
            "off_variant": "a",
        },
        "variants.0.value",
    ),
    ("POST", f"/admin/flags/{TIER}/variants", {"name": "b!", "value": "x"}, "name"),
    ("POST", f"/admin/flags/{TIER}/variants", {"name": "n", "value": 3}, "value"),
    ("PATCH", f"/admin/flags/{TIER}/variants/gold", {"name": "x", "value": "y"}, "body"),
    ("PATCH", f"/admin/flags/{TIER}/environments/beta", {"on_variant": "lead"}, "on_variant"),
    (
        "PATCH",
        f"/admin/flags/{TIER}/environments/beta",
        {"split": {"gold": 200, "silver": 700}},
        "split",
    ),
    (
        "PATCH",
        f"/admin/flags/{TIER}/environments/beta",
        {"split": [{"variant": "lead", "weight": 1000}]},
        "split.0.variant",
    ),
    (
        "PATCH",
        f"/admin/flags/{TIER}/environments/beta",
        {"tenant_variants": {"acme": "lead"}},
        "tenant_variants.acme",
    ),
]


def test_bad_input__422_naming_the_field(api: Api) -> None:
    """Every malformed typed-flag request is a 422 naming its field, never a 500."""
    api.create_flag(**TIER_BODY)
    for method, path, body, field in BAD_INPUT:
        if path == "/admin/flags":
            body = {**body, "key": "other.flag"}
        response = api.request(method, path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert api.error(response)["field"] == field, (path, body)
    number = {"type": "number", "variants": [{"name": "n", "value": 1}], "off_variant": "n"}
    api.create_flag("n.ttl", **number)
    response = api.post("/admin/flags/n.ttl/variants", json={"name": "huge", "value": 10**400})
    assert response.status_code == 422 and api.error(response)["field"] == "value"


def test_boolean_flag__variant_fields_refused(api: Api) -> None:
    """A boolean flag takes no split and no variants of its own."""
    api.create_flag("bool.flag")
    response = api.patch("/admin/flags/bool.flag/environments/beta", json={"split": {"on": 1000}})
    assert response.status_code == 422 and api.error(response)["field"] == "split"
    response = api.post("/admin/flags/bool.flag/variants", json={"name": "x", "value": True})
    assert response.status_code == 422 and api.error(response)["field"] == "type"


def test_scoped_editor__cannot_edit_shared_variants(api: Api) -> None:
    """Variants are shared by every environment: an editor scoped to one gets 403."""
    api.create_flag(**TIER_BODY)
    token = api.token("editor", ["beta"])
    response = api.post(
        f"/admin/flags/{TIER}/variants", json={"name": "iron", "value": "i"}, token=token
    )
    assert response.status_code == 403
    response = api.patch(
        f"/admin/flags/{TIER}/environments/beta", json={"on_variant": "gold"}, token=token
    )
    assert response.status_code == 200, response.text
