"""GET /sdk/v1/snapshot on a real server, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from .harness import ENV, Deployment


def get(url: str, token: str | None, env: str = ENV, **headers: str) -> httpx.Response:
    h = dict(headers)
    if token:
        h["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{url}/sdk/v1/snapshot", params={"environment": env}, headers=h)


def test_snapshot__client_token__flags_version_and_etag(deployment: Deployment) -> None:
    """The body is {environment, version, flags}; the ETag is the quoted version."""
    deployment.create_flag("checkout", rollout=30)
    server = deployment.server()
    r = get(server.url, deployment.client_token)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"environment", "version", "flags"}
    assert body["environment"] == ENV and body["version"] >= 2
    assert body["flags"]["checkout"]["rollout"] == 30
    assert r.headers["etag"] == f'"{body["version"]}"'


def test_snapshot__version__grows_with_each_change_in_the_environment(
    deployment: Deployment,
) -> None:
    """Each committed change in the environment bumps the version; If-None-Match of the
    current one is a bodiless 304, of an old one a full answer."""
    deployment.create_flag("checkout")
    server = deployment.server()
    first = get(server.url, deployment.client_token)
    etag = first.headers["etag"]
    assert get(server.url, deployment.client_token, **{"If-None-Match": etag}).status_code == 304
    not_modified = get(server.url, deployment.client_token, **{"If-None-Match": etag})
    assert not_modified.content == b""
    r = deployment.admin_request(
        server, "POST", "/admin/flags/checkout/kill", json={"reason": "test", "environments": [ENV]}
    )
    assert r.status_code == 200
    after = get(server.url, deployment.client_token, **{"If-None-Match": etag})
    assert after.status_code == 200
    assert after.json()["version"] == first.json()["version"] + 1
    assert after.json()["flags"]["checkout"]["killed"] is True


@pytest.mark.parametrize(
    ("token_kind", "env", "status", "field"),
    [
        ("none", ENV, 401, "Authorization"),
        ("client", "staging", 403, "environment"),
        ("client", "Bad Env", 422, "environment"),
        ("admin", "nowhere", 404, "environment"),
    ],
)
def test_snapshot__bad_request__error_names_the_field(
    deployment: Deployment, token_kind: str, env: str, status: int, field: str
) -> None:
    """No token 401; a client token outside its scope 403; bad or unknown env 422/404."""
    server = deployment.server()
    token = {"none": None, "client": deployment.client_token, "admin": deployment.admin}[token_kind]
    r = get(server.url, token, env)
    assert r.status_code == status
    assert r.json()["error"]["field"] == field


def test_client_token__admin_route__forbidden(deployment: Deployment) -> None:
    """A client token reads its snapshot and stream, nothing else."""
    server = deployment.server()
    headers = {"Authorization": f"Bearer {deployment.client_token}"}
    r = httpx.get(f"{server.url}/admin/flags", headers=headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
