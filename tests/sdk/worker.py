"""An SDK process for tests and benchmarks: a FlagClient that prints one JSON line per
applied update (``{"event": "change", "version", "killed", "enabled", "source", "t"}``,
``t`` being ``time.monotonic()``, comparable across processes on Linux) and exits
when its stdin closes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from flags import FlagClient
from flags.model import Snapshot

_lock = threading.Lock()


def emit(**data: Any) -> None:
    with _lock:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--env", default="production")
    parser.add_argument("--flag", default="checkout")
    parser.add_argument("--redis-url")
    parser.add_argument("--prefix", default="flagrail:")
    parser.add_argument("--backup")
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--metrics", type=float, default=10.0)
    parser.add_argument("--app", default="worker")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    client = FlagClient(
        args.url,
        args.token,
        args.env,
        redis_url=args.redis_url,
        backup_path=args.backup,
        poll_interval=args.poll,
        metrics_interval=args.metrics,
        app_name=args.app,
        channel_prefix=args.prefix,
    )

    def changed(c: FlagClient, snapshot: Snapshot) -> None:
        t = time.monotonic()
        state = snapshot.flags.get(args.flag)
        emit(
            event="change",
            version=snapshot.version,
            killed=bool(state and state.killed),
            rollout=state.rollout if state else None,
            enabled=c.is_enabled(args.flag),
            source=c.stats()["source"],
            t=t,
            pid=os.getpid(),
        )

    client.on_change(changed)
    if client.ready and client.snapshot is not None:
        changed(client, client.snapshot)
    emit(event="started", pid=os.getpid(), instance_id=client.instance_id)
    sys.stdin.read()  # until the parent closes our stdin
    client.close()
    emit(event="closed", stats=client.stats())


if __name__ == "__main__":
    main()
