"""Every socket a local run opens listens on 127.0.0.1 only."""

from __future__ import annotations

import threading
import time

import playground
from playground import RunConfig
from support import listening_addresses

LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def test_a_run_listens_on_loopback_only():
    playground.default_pool().shutdown()
    before = listening_addresses()
    seen: set[tuple[str, str]] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(listening_addresses() - before)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = playground.run(RunConfig(model="mlp", strategy="pipeline", world_size=2, micro_batches=4,
                                          steps=30, global_batch=64), warm=False)
    finally:
        done.set()
        watcher.join()
    assert result.passed
    assert seen, "the run's rendezvous store was never seen listening"
    assert all(addr in LOOPBACK for addr, _ in seen), seen
