"""The loop never waits on the host: device prefetch ahead of the step, the non-finite guard read late."""
import json
import threading
import time

import numpy as np
import pytest

from stiv_jax.training import prefetch


class CountingIterator:
    """Host batches ``{"x": [i]}`` with a grain-like ``get_state``; optionally slow or failing at ``fail_at``."""

    def __init__(self, delay_s=0.0, fail_at=None):
        self.i, self.delay_s, self.fail_at = 0, delay_s, fail_at

    def __next__(self):
        time.sleep(self.delay_s)
        if self.i == self.fail_at:
            raise OSError(f"shard unreadable at batch {self.i}")
        self.i += 1
        return {"x": np.array([self.i - 1])}

    def get_state(self):
        return {"next": self.i}


def test_prefetcher_keeps_depth_batches_ready_and_no_more():
    host = CountingIterator()
    placed = []
    batches = prefetch.DevicePrefetcher(host, lambda b: placed.append(b["x"][0]) or b, depth=2)
    try:
        deadline = time.time() + 10
        while batches.ready() < 2 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        # 2 placed batches wait in the queue, a third may be read and placed but held by the full queue.
        assert batches.ready() == 2 and 2 <= len(placed) <= 3
        for expected in range(5):
            batch, wait = batches.__next__()
            assert int(batch["x"][0]) == expected and wait >= 0
        assert len(placed) <= 5 + 3
    finally:
        batches.close()


def test_checkpointed_state_is_that_of_the_last_batch_the_step_took():
    host = CountingIterator()
    batches = prefetch.DevicePrefetcher(host, lambda b: b, depth=2)
    try:
        assert json.loads(batches.get_state()) == {"next": 0}
        for _ in range(3):
            next(batches)
        time.sleep(0.2)
        assert host.i > 3                                        # the thread read ahead
        assert json.loads(batches.get_state()) == {"next": 3}   # but a resume starts after batch 2
    finally:
        batches.close()


def test_host_reading_overlaps_the_consumer():
    """Host batches take 50 ms and the 'step' 50 ms: with the prefetcher the consumer waits for data only at the
    start (no timed assertion: the waits are counted, the first one excluded)."""
    batches = prefetch.DevicePrefetcher(CountingIterator(delay_s=0.05), lambda b: b, depth=2)
    try:
        next(batches)
        time.sleep(0.2)   # the thread fills the queue meanwhile
        waits = []
        for _ in range(2):
            _, wait = next(batches)
            waits.append(wait)
        assert all(w < 0.05 for w in waits)   # queued batches are handed over without reading the host
    finally:
        batches.close()


def test_a_host_error_reaches_the_step_loop_with_its_message():
    batches = prefetch.DevicePrefetcher(CountingIterator(fail_at=2), lambda b: b, depth=2)
    try:
        next(batches), next(batches)
        with pytest.raises(OSError, match="unreadable at batch 2"):
            next(batches)
        with pytest.raises(OSError):
            next(batches)
    finally:
        batches.close()
    assert not any(t.name == "device-prefetch" and t.is_alive() for t in threading.enumerate())


def test_lagged_reader_reads_each_result_lag_steps_late_and_holds_at_most_lag():
    reads = []
    reader = prefetch.LaggedReader(2, read=lambda v: reads.append(v) or v)
    out = [reader.push(step) for step in range(6)]
    assert out == [None, None, 0, 1, 2, 3] and reads == [0, 1, 2, 3]
    assert reader.in_flight() == 2
    assert prefetch.LaggedReader(0).push(np.int32(7)) == 7
    with pytest.raises(ValueError, match="nonfinite_check_lag"):
        prefetch.LaggedReader(-1)
    with pytest.raises(ValueError, match="device_prefetch"):
        prefetch.DevicePrefetcher(CountingIterator(), lambda b: b, depth=0)
