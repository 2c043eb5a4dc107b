"""The console's kill landing ("applied in n of m processes"): each lagging process is
named with the token it reports under (#14), as ``kill?wait=`` names it."""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi.testclient import TestClient

from tests.console.conftest import login


def _report(client: TestClient, token: str, instance_id: str, version: int) -> None:
    answer = client.post(
        "/sdk/v1/instances",
        json={
            "instance_id": instance_id,
            "environment": "staging",
            "host": "web-1",
            "pid": 4242,
            "app": "shop",
            "applied_version": version,
            "interval": 10.0,
        },
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code < 300, answer.text


def test_kill_landing__lagging_process__named_with_its_token(
    console_app: TestClient, logged_in: Callable[[str], str]
) -> None:
    """A process still on an older version is listed with its token's name, on the
    page and in the live JSON; a reader's view of the same landing names no token."""
    # Given an SDK process in staging, reporting under token "shop-sdk", at version 0
    store = console_app.app.state.store  # type: ignore[attr-defined]
    _, value = store.create_token("shop-sdk", "client", ["staging"], actor="test")
    _report(console_app, value, "i-lagging", 0)
    # When olga kills checkout in staging from the console
    csrf = logged_in("olga")
    killed = console_app.post(
        "/console/flags/checkout/environments/staging/kill",
        data={"csrf": csrf, "reason": "incident"},
        follow_redirects=False,
    )
    assert killed.status_code == 303, killed.text
    landing = killed.headers["location"]
    version = re.search(r"version=(\d+)", landing).group(1)  # type: ignore[union-attr]
    # Then the landing names the lagging process and its token
    page = console_app.get(landing)
    assert "applied in 0 of 1 processes" in page.text
    assert "shop@web-1:4242 (v0, token shop-sdk)" in page.text
    live = console_app.get(f"/console/flags/checkout/applied?env=staging&version={version}")
    [item] = live.json()["lagging"]
    assert item["token_name"] == "shop-sdk" and item["token_id"]
    # And a reader sees the process but not the token
    login(console_app, "rita")
    as_reader = console_app.get(f"/console/flags/checkout/applied?env=staging&version={version}")
    [item] = as_reader.json()["lagging"]
    assert item["name"] == "shop@web-1:4242" and item["token_name"] is None
