"""``/admin/webhooks`` through the app in process: the secret once, admins only, scope,
bad input as 422 naming the field, the delivery log and redelivery."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from api.webhooks.worker import DeliveryWorker, WorkerSettings
from flags.history import HistoryQuery
from flags.settings import Settings
from flags.store.sql import SqlFlagStore
from tests.api.conftest import Api
from tests.webhooks.receiver import Receiver

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def api(database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The admin API with the webhook routes (no worker: tests drive one)."""
    from api.app import create_app

    monkeypatch.setenv("FLAGRAIL_WEBHOOK_WORKER", "false")
    store = SqlFlagStore(database_url)
    app = create_app(Settings(database_url=database_url, scheduler=False), store=store)
    assert not hasattr(app.state, "webhook_worker")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, store, database_url)


def _create(api: Api, **body: Any) -> dict[str, Any]:
    response = api.post(
        "/admin/webhooks", json={"url": "https://hooks.example.com/a", "events": ["*"], **body}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_create__admin__201_secret_once_and_history(api: Api) -> None:
    """Create answers the secret; list and show never do; the history has no secret."""
    created = _create(api, environments=["production"], format="slack")
    assert created["secret"].startswith("whsec_")
    assert created["format"] == "slack" and created["environments"] == ["production"]
    listed = api.get("/admin/webhooks").json()["items"]
    shown = api.get(f"/admin/webhooks/{created['id']}").json()
    assert [w["id"] for w in listed] == [created["id"]]
    assert created["secret"] not in str(listed) + str(shown)
    rows = api.store.list_history(HistoryQuery(action="webhook.create")).items
    assert len(rows) == 1 and created["secret"] not in str(rows[0].to_dict())


@pytest.mark.parametrize("role", ["reader", "operator", "editor", "guard"])
def test_routes__not_admin__403(api: Api, role: str) -> None:
    """Every webhook route needs an admin."""
    token = api.token(role)
    assert api.get("/admin/webhooks", token=token).status_code == 403
    response = api.post(
        "/admin/webhooks", json={"url": "https://x.example", "events": ["*"]}, token=token
    )
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://x.example", "events": ["*"]}, "url"),
        ({"url": "https://x.example", "events": ["nope.*"]}, "events"),
        ({"url": "https://x.example", "events": ["*"], "format": "teams"}, "format"),
        ({"url": "https://x.example", "events": ["*"], "bogus": 1}, "bogus"),
        ({"events": ["*"]}, "url"),
    ],
)
def test_create__bad_field__422_naming_it(api: Api, body: dict[str, Any], field: str) -> None:
    """Bad input is a 422 whose error names the field, never a 500."""
    response = api.post("/admin/webhooks", json=body)
    assert response.status_code == 422
    assert api.error(response)["field"] == field


def test_scoped_admin__own_environments_only(api: Api) -> None:
    """A scoped admin names only its environments and sees only subscriptions in scope."""
    scoped = api.token("admin", ["staging"])
    refused = api.post(
        "/admin/webhooks",
        json={"url": "https://x.example", "events": ["*"], "environments": ["production"]},
        token=scoped,
    )
    assert refused.status_code == 403
    everywhere = _create(api)
    mine = api.post(
        "/admin/webhooks", json={"url": "https://x.example", "events": ["*"]}, token=scoped
    ).json()
    assert mine["scope"] == ["staging"]
    seen = [w["id"] for w in api.get("/admin/webhooks", token=scoped).json()["items"]]
    assert seen == [mine["id"]]
    assert api.get(f"/admin/webhooks/{everywhere['id']}", token=scoped).status_code == 404


def test_update_pause_delete__lifecycle(api: Api) -> None:
    """PATCH changes what it names; pause/resume flip paused; delete then 404."""
    sub = _create(api, flags=["a.*"])
    patched = api.patch(f"/admin/webhooks/{sub['id']}", json={"flags": None, "events": ["flag.*"]})
    assert patched.status_code == 200
    assert (patched.json()["flags"], patched.json()["events"]) == (None, ["flag.*"])
    assert api.post(f"/admin/webhooks/{sub['id']}/pause").json()["paused"] is True
    assert api.post(f"/admin/webhooks/{sub['id']}/resume").json()["paused"] is False
    assert api.delete(f"/admin/webhooks/{sub['id']}").status_code == 200
    assert api.get(f"/admin/webhooks/{sub['id']}").status_code == 404
    assert api.patch("/admin/webhooks/wh_nope", json={}).status_code == 404


def test_deliveries_and_redeliver__log_then_again(api: Api, engine: Engine) -> None:
    """The log shows a delivery's status, attempts and code; redeliver sends it again."""
    from tests.webhooks.conftest import commit_change

    with Receiver() as receiver:
        sub = _create(api, url=receiver.url(), events=["state.*"])
        receiver.secrets["/hook"] = sub["secret"]
        commit_change(engine)
        worker = DeliveryWorker(api.client.app.state.webhooks.store, WorkerSettings())
        worker.run_once()
        [entry] = api.get(f"/admin/webhooks/{sub['id']}/deliveries").json()["items"]
        assert (entry["status"], entry["attempts"], entry["response_code"]) == ("delivered", 1, 200)
        again = api.post(f"/admin/webhooks/{sub['id']}/deliveries/{entry['id']}/redeliver")
        assert again.status_code == 202
        worker.run_once()
        worker.close()
        assert len(receiver.received()) == 2 and all(r.verified for r in receiver.received())
    bad = api.get(f"/admin/webhooks/{sub['id']}/deliveries", params={"status": "lost"})
    assert bad.status_code == 422 and api.error(bad)["field"] == "status"
    missing = api.post(f"/admin/webhooks/{sub['id']}/deliveries/999999/redeliver")
    assert missing.status_code == 404


def test_create_app__worker_on__started_and_stopped_with_the_app(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """By default the app runs the delivery worker while it is up, and stops it."""
    from api.app import create_app

    monkeypatch.delenv("FLAGRAIL_WEBHOOK_WORKER", raising=False)
    app = create_app(Settings(database_url=sqlite_url, scheduler=False))
    worker = app.state.webhook_worker
    assert worker in app.state.services
    with TestClient(app):
        assert worker._thread is not None and worker._thread.is_alive()
        thread = worker._thread
    assert worker._thread is None and not thread.is_alive()
