"""The admin client of the webhook process tests: an httpx client with an admin token
against one ``flagrail serve`` (``tests.serve.ServeProcess``)."""

from __future__ import annotations

from typing import Any

import httpx


class Admin:
    """An httpx client with an admin token against one server."""

    def __init__(self, base_url: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def subscribe(self, url: str, **body: Any) -> dict[str, Any]:
        response = self.http.post("/admin/webhooks", json={"url": url, **body})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def set_rollout(self, flag: str, env: str, rollout: int, reason: str | None = None) -> None:
        """``PATCH /admin/flags/{flag}/environments/{env}`` (enabled, ``rollout``), as a
        user's change is made; asserts it applied (200)."""
        response = self.http.patch(
            f"/admin/flags/{flag}/environments/{env}",
            json={"enabled": True, "rollout": rollout, "reason": reason or f"to {rollout}"},
        )
        assert response.status_code == 200, response.text

    def close(self) -> None:
        self.http.close()
