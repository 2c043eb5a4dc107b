"""``ServerSource``'s acknowledgements (instance reports after applied changes),
against a stub server: changes applied back to back are acknowledged together."""

from __future__ import annotations

import itertools
import json
import time

from flags import FlagClient
from flags.model import FlagChanged
from flags.sync.server import ACK_DELAY, ACK_GAP
from flags.testing import wait_for

from .stub_server import ENV, stub_server


def test_acks__changes_back_to_back__one_report_per_ack_gap_naming_the_last() -> None:
    """20 changes applied 5 ms apart cost a few instance reports, not 20, and the last
    report names the last version."""
    with stub_server() as (url, state, _server):
        client = FlagClient(url, "good", ENV, metrics_interval=3600)
        try:
            assert client.wait_until_ready(5)
            started = time.monotonic()
            for version in range(2, 22):
                client.receive_change(FlagChanged(ENV, version, "checkout", None), "redis")
                time.sleep(0.005)
            # A change without state is fetched: the last is applied when it is applied.
            wait_for(lambda: client.version == 21, what="the last change applied")
            burst = time.monotonic() - started
            time.sleep(ACK_GAP + ACK_DELAY[1] + 0.3)
            with state.lock:
                posts = list(zip(state.posted, state.posted_at, strict=True))
            reports = [json.loads(b) for (p, b), _t in posts if p == "/sdk/v1/instances"]
            sent_at = [t for (p, _b), t in posts if p == "/sdk/v1/instances"]
        finally:
            client.close()
        assert client.version == 21
        assert 1 <= len(reports) <= 2 + int(burst / ACK_GAP)
        assert reports[-1]["applied_version"] == 21
        # Spaced by the client (ACK_GAP from one send to the next); arrival jitter aside.
        gaps = [b - a for a, b in itertools.pairwise(sent_at)]
        assert all(g >= ACK_GAP * 0.75 for g in gaps), gaps
