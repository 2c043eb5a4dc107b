"""``flags.background.Background``: one thread per service, started once, stopped and
joined by ``close`` (which also wakes the loop's own event), restartable."""

from __future__ import annotations

import threading

from flags.background import Background
from flags.testing import wait_for


def test_background__start_twice_close_twice__one_thread_then_none() -> None:
    rounds: list[str] = []
    wake = threading.Event()

    def loop(stop: threading.Event) -> None:
        rounds.append(threading.current_thread().name)
        while not stop.is_set():
            wake.wait(30)  # only close() ends this wait early
            wake.clear()

    service = Background("flagrail-test-loop", loop)
    service.wakes(wake)
    service.start()
    service.start()
    wait_for(lambda: rounds, what="the loop")
    assert rounds == ["flagrail-test-loop"]
    assert service.running
    alive = [t for t in threading.enumerate() if t.name == "flagrail-test-loop"]
    assert len(alive) == 1
    service.close()  # returns at once: the wake event ended the 30 s wait
    assert not alive[0].is_alive()
    assert not service.running
    service.close()
    service.start()  # a closed service starts again with a fresh stop flag
    wait_for(lambda: len(rounds) == 2, what="the restarted loop")
    service.close()
    assert not any(t.name == "flagrail-test-loop" for t in threading.enumerate())
