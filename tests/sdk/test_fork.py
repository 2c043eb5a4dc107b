"""Pre-fork servers: an SDK created before os.fork() keeps working in the child."""

from __future__ import annotations

import os
import time

import pytest

from flags import FlagClient
from flags.testing import wait_for

from .harness import ENV, Deployment
from .test_sync_recovery import kill


def test_fork__client_made_before__child_sees_later_changes(deployment: Deployment) -> None:
    """An SDK created before os.fork() restarts its sync in the child (new instance id):
    a kill made after the fork reaches the child, and the parent too."""
    deployment.create_flag("checkout")
    server = deployment.server()
    client = FlagClient(server.url, deployment.client_token, ENV, poll_interval=0.2)
    try:
        assert client.wait_until_ready(10)
        wait_for(lambda: client.stats()["live"])
        parent_id = client.instance_id
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: only SDK calls, then _exit with a verdict
            code = 1
            try:
                os.close(ready_r)
                deadline = time.monotonic() + 15
                while not client.stats()["live"] and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.write(ready_w, b"r")
                while client.is_enabled("checkout") and time.monotonic() < deadline:
                    time.sleep(0.01)
                fresh = client.instance_id != parent_id
                code = 0 if not client.is_enabled("checkout") and fresh else 2
            finally:
                os._exit(code)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"r"
        os.close(ready_r)
        kill(deployment, server)
        deadline = time.monotonic() + 20
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child never saw the kill")
        assert os.waitstatus_to_exitcode(status) == 0
        wait_for(lambda: not client.is_enabled("checkout"), what="the parent to see it too")
    finally:
        client.close()
