"""``flagrail serve`` in a subprocess for the webhook process tests, with webhook
settings of the test's choosing, and an admin token made on its database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from flags.testing.redis_server import free_port

FLAGRAIL = Path(sys.executable).with_name("flagrail")


class Server:
    """One ``flagrail serve`` process on ``database_url``; ``env`` adds settings
    (``FLAGRAIL_WEBHOOK_*``). ``kill()`` is a SIGKILL, ``stop()`` a SIGTERM."""

    def __init__(self, database_url: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                str(FLAGRAIL),
                "serve",
                *("--database-url", database_url, "--port", str(self.port)),
                *("--log-level", "warning"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "FLAGRAIL_REDIS_URL": "",
                "FLAGRAIL_SCHEDULER": "false",
                "FLAGRAIL_BOOTSTRAP_TOKEN_FILE": str(log.with_suffix(".token")),
                **(env or {}),
            },
        )

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server on port {self.port} exited with {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, leases and transactions left as they are."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


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

    def set_rollout(self, flag: str, env: str, rollout: int) -> None:
        response = self.http.patch(
            f"/admin/flags/{flag}/environments/{env}",
            json={"enabled": True, "rollout": rollout, "reason": f"to {rollout}"},
        )
        assert response.status_code == 200, response.text

    def close(self) -> None:
        self.http.close()
