"""Approvals across real processes: one ``flagrail serve`` for the module, people acting
through HTTP and through the ``flagrail`` CLI against it (``--url``/``--token``).

Production is gated with one approval (set with ``flagrail env policy``): an editor's
rollout raise waits as a change request, the editor cannot approve it, a second person
does and it applies, with a history row naming the requester, the approver and the
request; a request whose flag moved since is stale; a kill applies at once; break-glass
applies, recorded, and stays listed until someone else acknowledges it; a person's
second token does not count as a second approval.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from sdk.harness import Worker

from flags.model import StateChange
from flags.store.sql import SqlFlagStore
from flags.store.users import UserStore
from tests.serve import FLAGRAIL, ServeProcess

pytestmark = pytest.mark.slow

ENV = "production"


class People:
    """The server, its database, and a token per person (name -> token value)."""

    def __init__(self, server: ServeProcess, store: SqlFlagStore) -> None:
        self.server = server
        self.store = store
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    def add(self, name: str, role: str, user: str | None = None) -> None:
        info, secret = self.store.create_token(name, role, None, actor="test", user=user)
        self.tokens[name], self.ids[name] = secret, info.id

    def http(self, who: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.request(
            method, self.server.base_url + path, headers=headers, timeout=10, **kwargs
        )

    def cli(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``flagrail <args>`` against the server as ``who``."""
        return subprocess.run(
            [str(FLAGRAIL), *args, "--url", self.server.base_url, "--token", self.tokens[who]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def rollout(self, flag: str) -> int:
        return self.store.get_state(flag, ENV).rollout

    def served_rollout(self, flag: str) -> int:
        """The rollout SDKs are served (the server's snapshot of production)."""
        answer = self.http("sdk", "GET", "/sdk/v1/snapshot", params={"environment": ENV})
        assert answer.status_code == 200, answer.text
        return int(answer.json()["flags"][flag]["rollout"])


@pytest.fixture(scope="module")
def people(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[People]:
    """One server for the module on a migrated SQLite file; production gated by one
    approval through ``flagrail env policy``; staging by two."""
    folder = tmp_path_factory.mktemp("approvals-processes")
    shutil.copyfile(sqlite_template, folder / "flagrail.db")
    url = f"sqlite:///{folder / 'flagrail.db'}"
    store = SqlFlagStore(url)
    server = ServeProcess(url, folder / "server.log")  # scheduler off, no Redis
    try:
        server.wait_healthy(timeout=90)
        crew = People(server, store)
        crew.add("root", "admin")
        crew.add("alice", "editor")
        crew.add("bob", "editor")
        crew.add("olga", "operator")
        crew.add("sdk", "client")
        # Cheap argon2id parameters: the users only own tokens here, nobody logs in.
        users = UserStore(store.engine, hasher=PasswordHasher(time_cost=1, memory_cost=1024))
        for name in ("carol", "dave"):
            users.create_user(name, "a long enough password", "editor", actor="test")
        crew.add("carol-laptop", "editor", user="carol")
        crew.add("carol-ci", "editor", user="carol")
        crew.add("dave-laptop", "editor", user="dave")
        done = crew.cli("root", "env", "policy", ENV, "--approvals", "1")
        assert done.returncode == 0 and "production: 1 approval;" in done.stdout, done.stderr
        put = crew.http(
            "root", "PUT", "/admin/environments/staging/policy", json={"required_approvals": 2}
        )
        assert put.status_code == 200, put.text
        yield crew
    finally:
        server.stop()
        store.close()


def new_flag(people: People, key: str, rollout: int) -> None:
    people.store.create_flag(key, actor="seed")
    for env in (ENV, "staging"):
        people.store.update_state(
            key, env, StateChange(enabled=True, rollout=rollout), actor="seed"
        )


def request_id(output: str) -> int:
    """The number in the CLI's ``pending approval: change request N``."""
    line = output.strip().splitlines()[-1]
    assert line.startswith("pending approval: change request "), output
    return int(line.rsplit(" ", 1)[1])


def sdk_process(people: People, flag: str) -> Worker:
    """A real SDK process (``tests/sdk/worker.py``) on production, reporting ``flag``."""
    return Worker(
        ["--url", people.server.base_url, "--token", people.tokens["sdk"], "--flag", flag,
         "--poll", "0.5"]
    )  # fmt: skip


def check_gated_rollout__second_person_applies__history_names_both(people: People) -> None:
    """Pending -> self-approval refused -> approved by another person -> applied (and
    seen by a real SDK process); the history row names the requester, the approver and
    the request."""
    new_flag(people, "checkout", 10)
    sdk = sdk_process(people, "checkout")
    try:
        sdk.wait_for(lambda seen: seen.get("rollout") == 10, timeout=30)
        gated_rollout(people, sdk)
    finally:
        sdk.stop()


def gated_rollout(people: People, sdk: Worker) -> None:
    # When alice raises the rollout through the CLI
    done = people.cli("alice", "set", "checkout", "--env", ENV, "--rollout", "50")
    assert done.returncode == 0, done.stderr
    number = request_id(done.stdout)
    # Then nothing applied (SDKs are still served 10%), and she cannot approve it herself
    assert people.rollout("checkout") == 10 and people.served_rollout("checkout") == 10
    own = people.http("alice", "POST", f"/admin/change-requests/{number}/approve")
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    assert all(seen.get("rollout") != 50 for seen in sdk.drain())
    # When bob approves it over HTTP
    approved = people.http("bob", "POST", f"/admin/change-requests/{number}/approve")
    # Then it is applied, and the history row says who asked, who approved, and which request
    assert approved.status_code == 200 and approved.json()["status"] == "applied"
    assert people.rollout("checkout") == 50 and people.served_rollout("checkout") == 50
    sdk.wait_for(lambda seen: seen.get("rollout") == 50, timeout=30)  # the SDK process too
    history = people.http("root", "GET", "/admin/history", params={"flag": "checkout"})
    row = history.json()["items"][0]
    assert row["action"] == "state.update" and row["actor"] == "alice"
    assert f"change request {number}, approved by token:{people.ids['bob']}" in row["reason"]


def check_stale_request__flag_moved__refused(people: People) -> None:
    """A request whose flag changed since it was made cannot apply."""
    new_flag(people, "search", 30)
    number = pending_id(people.http("alice", "PATCH", f"/admin/flags/search/environments/{ENV}",
                                    json={"rollout": 60}))  # fmt: skip
    # A lowering change (by an editor) applies at once and moves the flag
    lowered = people.http(
        "bob", "PATCH", f"/admin/flags/search/environments/{ENV}", json={"rollout": 20}
    )
    assert lowered.status_code == 200 and people.rollout("search") == 20, lowered.text
    refused = people.http("bob", "POST", f"/admin/change-requests/{number}/approve")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "change_request_stale"
    shown = people.http("bob", "GET", f"/admin/change-requests/{number}").json()
    assert shown["status"] == "stale" and people.rollout("search") == 20


def pending_id(response: httpx.Response) -> int:
    assert response.status_code == 202, response.text
    return int(response.json()["id"])


def check_kill__operator__instant_without_request(people: People) -> None:
    """A kill by an operator applies at once in the gated environment."""
    new_flag(people, "payments", 100)
    sdk = sdk_process(people, "payments")
    try:
        sdk.wait_for(lambda seen: seen.get("enabled") is True, timeout=30)
        body = {"reason": "incident", "environments": [ENV]}
        done = people.http("olga", "POST", "/admin/flags/payments/kill", json=body)
        assert done.status_code == 200, done.text
        assert people.store.get_state("payments", ENV).killed
        sdk.wait_for(lambda seen: seen.get("killed") is True, timeout=30)  # no request
    finally:
        sdk.stop()
    requests = people.http("root", "GET", "/admin/change-requests", params={"flag": "payments"})
    assert requests.json()["items"] == []
    body = {"reason": "fixed", "environments": [ENV]}
    unkill = people.http("olga", "POST", "/admin/flags/payments/unkill", json=body)
    assert unkill.status_code == 202, unkill.text
    [request] = unkill.json()["change_requests"]
    assert request["kind"] == "unkill" and people.store.get_state("payments", ENV).killed


def check_break_glass__recorded_and_listed_until_acknowledged(people: People) -> None:
    """An admin breaks glass from the CLI: applied, recorded, a review item that only
    someone else closes. An editor may not break glass."""
    new_flag(people, "banner", 0)
    path = f"/admin/flags/banner/environments/{ENV}"
    refused = people.http(
        "alice", "PATCH", path, params={"break_glass": "true"},
        json={"rollout": 90, "reason": "outage"},
    )  # fmt: skip
    assert refused.status_code == 403 and "break glass" in refused.json()["error"]["message"]
    done = people.cli("root", "set", "banner", "--env", ENV, "--rollout", "90",
                      "--break-glass", "--reason", "outage")  # fmt: skip
    assert done.returncode == 0 and people.rollout("banner") == 90, done.stderr
    history = people.http("root", "GET", "/admin/history", params={"flag": "banner"})
    assert history.json()["items"][0]["reason"] == "break-glass: outage"
    # A schedule breaks glass the same way (flagrail plan schedule --break-glass)
    made = people.cli(
        "root", "plan", "schedule", "banner", "--env", ENV, "--rollout", "95",
        "--at", "2099-01-01T00:00:00Z", "--break-glass", "--reason", "window",
    )  # fmt: skip
    assert made.returncode == 0 and made.stdout.startswith("schedule "), made.stderr

    def open_items() -> list[dict[str, Any]]:
        items = people.http("bob", "GET", "/admin/reviews").json()["items"]
        return [i for i in items if i["flag"] == "banner"]

    [item] = [i for i in open_items() if i["reason"] == "outage"]
    own = people.http("root", "POST", f"/admin/reviews/{item['id']}/acknowledge")
    assert own.status_code == 403 and item in open_items()
    acked = people.http("bob", "POST", f"/admin/reviews/{item['id']}/acknowledge")
    assert acked.status_code == 200 and acked.json()["open"] is False
    assert [i["reason"] for i in open_items()] == ["window"]


def check_same_person_second_token__not_a_second_approval(people: People) -> None:
    """Staging needs two people: carol's second token is still carol."""
    new_flag(people, "profile", 10)
    path = "/admin/flags/profile/environments/staging"
    number = pending_id(people.http("alice", "PATCH", path, json={"rollout": 70}))
    first = people.http("carol-laptop", "POST", f"/admin/change-requests/{number}/approve")
    assert first.status_code == 200 and first.json()["status"] == "pending"
    again = people.http("carol-ci", "POST", f"/admin/change-requests/{number}/approve")
    assert again.status_code == 409 and "already approved" in again.json()["error"]["message"]
    assert people.store.get_state("profile", "staging").rollout == 10
    done = people.http("dave-laptop", "POST", f"/admin/change-requests/{number}/approve")
    assert done.status_code == 200 and done.json()["status"] == "applied"
    persons = [a["person"] for a in done.json()["approvals"]]
    assert persons == ["user:carol", "user:dave"]


def test_approvals__across_processes(people: People) -> None:
    """Each scenario on its own flag, on the one server (a single test, so that pytest
    -n never splits the module over two servers)."""
    check_gated_rollout__second_person_applies__history_names_both(people)
    check_stale_request__flag_moved__refused(people)
    check_kill__operator__instant_without_request(people)
    check_break_glass__recorded_and_listed_until_acknowledged(people)
    check_same_person_second_token__not_a_second_approval(people)
