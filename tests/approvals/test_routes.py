"""The approval routes through the app (TestClient) on SQLite and PostgreSQL: policy,
change requests, break-glass reviews, and bad input answered 4xx naming the field.

Gated changes are made through ``ApprovalService.submit`` here; the admin API's own
change paths through the gate are in ``test_gate.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.service.approvals import ApprovalService
from api.service.principal import Principal
from flags.model import StateChange
from flags.store.change_requests import ChangeKind
from tests.api.conftest import Api, make_app_settings

FLAG = "checkout.v2"
ENV = "production"


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    """The admin API (create_app registers the approval routes)."""
    import warnings

    from api.app import create_app
    from flags.store.sql import SqlFlagStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    store = SqlFlagStore(database_url)
    app = create_app(make_app_settings(database_url), store=store)
    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client, store, database_url)
        api.create_flag(FLAG)
        store.update_state(FLAG, ENV, StateChange(enabled=True, rollout=10), actor="seed")
        yield api


def approvals(api: Api) -> ApprovalService:
    return api.client.app.state.approvals  # type: ignore[attr-defined,no-any-return]


def principal(api: Api, secret: str) -> Principal:
    info = api.store.authenticate(secret)
    assert info is not None
    return Principal.from_token(info)


def test_policy__put_and_get__round_trip(api: Api) -> None:
    """PUT sets the policy; GET reads it; the default is 0 approvals."""
    assert api.get(f"/admin/environments/{ENV}/policy").json()["required_approvals"] == 0
    put = api.request("PUT", f"/admin/environments/{ENV}/policy", json={"required_approvals": 1})
    assert put.status_code == 200, put.text
    assert put.json() == {"environment": ENV, "required_approvals": 1, "allow_self_approval": False}


@pytest.mark.parametrize(
    "body", [{"required_approvals": 6}, {"required_approvals": "x"}, {}, {"required_approvals": -1}]
)
def test_policy__bad_body__422_naming_the_field(api: Api, body: dict[str, object]) -> None:
    """Out-of-range or missing required_approvals is a 4xx naming it."""
    response = api.request("PUT", f"/admin/environments/{ENV}/policy", json=body)
    assert response.status_code == 422
    assert api.error(response)["field"] == "required_approvals"


def test_policy__editor__403_and_unknown_env__404(api: Api) -> None:
    """Only an admin sets a policy; an unknown environment is 404."""
    editor = api.token("editor")
    body = {"required_approvals": 1}
    assert (
        api.request("PUT", f"/admin/environments/{ENV}/policy", json=body, token=editor).status_code
        == 403
    )
    assert api.request("PUT", "/admin/environments/nowhere/policy", json=body).status_code == 404


def test_change_request__approve_by_second_token__applied(api: Api) -> None:
    """List and show a pending request with its diff; the author cannot approve; another
    person's approval applies it."""
    api.request("PUT", f"/admin/environments/{ENV}/policy", json={"required_approvals": 1})
    author, other = api.token("editor"), api.token("editor")
    outcome = approvals(api).submit(
        principal(api, author), ChangeKind.STATE, FLAG, ENV, StateChange(rollout=50)
    )
    assert outcome.request is not None
    rid = outcome.request.id
    listed = api.get("/admin/change-requests?status=pending", token=api.token("reader")).json()
    assert [r["id"] for r in listed["items"]] == [rid]
    shown = api.get(f"/admin/change-requests/{rid}").json()
    assert shown["diff"] == [{"field": "rollout", "direction": "raises", "before": 10, "after": 50}]
    refused = api.post(f"/admin/change-requests/{rid}/approve", token=author)
    assert refused.status_code == 403 and api.error(refused)["code"] == "self_approval"
    done = api.post(f"/admin/change-requests/{rid}/approve", token=other)
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "applied"
    assert api.store.get_state(FLAG, ENV).rollout == 50
    again = api.post(f"/admin/change-requests/{rid}/apply", token=other)
    assert again.status_code == 409


def test_change_request__edit_reject_cancel__and_bad_ids(api: Api) -> None:
    """PATCH edits (approvals drop), reject/cancel close; bad ids are 4xx, unknown 404."""
    api.request("PUT", f"/admin/environments/{ENV}/policy", json={"required_approvals": 2})
    author = api.token("editor")
    service, who = approvals(api), principal(api, author)
    first = service.submit(who, ChangeKind.STATE, FLAG, ENV, StateChange(rollout=50)).request
    second = service.submit(who, ChangeKind.STATE, FLAG, ENV, StateChange(rollout=60)).request
    assert first is not None and second is not None
    assert api.post(f"/admin/change-requests/{first.id}/approve").json()["approvals"] != []
    edited = api.patch(f"/admin/change-requests/{first.id}", json={"rollout": 70}, token=author)
    assert edited.status_code == 200, edited.text
    assert edited.json()["approvals"] == [] and edited.json()["after"]["rollout"] == 70
    rejected = api.post(f"/admin/change-requests/{first.id}/reject", json={"reason": "no"})
    assert rejected.json()["status"] == "rejected"
    cancelled = api.post(f"/admin/change-requests/{second.id}/cancel", token=author)
    assert cancelled.json()["status"] == "cancelled"
    assert api.get("/admin/change-requests/0").status_code == 422
    assert api.get("/admin/change-requests/abc").status_code == 422
    assert api.get("/admin/change-requests/999").status_code == 404
    bad = api.get("/admin/change-requests?status=nope")
    assert bad.status_code == 422 and api.error(bad)["field"] == "status"


def test_reviews__listed_until_a_second_person_acknowledges(api: Api) -> None:
    """A break-glass review item is listed until someone else acknowledges it."""
    api.request("PUT", f"/admin/environments/{ENV}/policy", json={"required_approvals": 1})
    outcome = approvals(api).submit(
        principal(api, api.admin), ChangeKind.STATE, FLAG, ENV, StateChange(rollout=100),
        break_glass="outage",
    )  # fmt: skip
    assert outcome.review is not None
    item = outcome.review.id
    assert [i["id"] for i in api.get("/admin/reviews").json()["items"]] == [item]
    assert api.post(f"/admin/reviews/{item}/acknowledge").status_code == 403
    assert api.get("/admin/reviews").json()["items"] != []
    acked = api.post(f"/admin/reviews/{item}/acknowledge", token=api.token("editor"))
    assert acked.status_code == 200 and acked.json()["open"] is False
    assert api.get("/admin/reviews").json()["items"] == []
    assert [i["id"] for i in api.get("/admin/reviews?all=true").json()["items"]] == [item]
