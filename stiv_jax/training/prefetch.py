"""The loop never waits on the host: batches are read, tokenized and put on the devices ahead of the step, and
the non-finite guard is read a few steps late.

``DevicePrefetcher`` runs the host data iterator and the host-to-device transfer (``host_global_batch``, e.g.
``mesh.host_to_global_batch``: ``jax.device_put`` / ``make_array_from_process_local_data`` with the batch
shardings) in a background thread, ``depth`` batches ahead, so data wait and H2D copies overlap the steps in
flight. It snapshots the iterator state with every batch, so a checkpoint records the data position of the last
batch the *step* took, not of the ones waiting in the queue (``get_state``: what grain's checkpoint handler saves).

``LaggedReader`` keeps the last ``lag`` results of the step on the device and reads only the oldest, so the host
never blocks on a step younger than ``lag`` steps: ``lag`` + 1 steps stay in flight.
"""
from __future__ import annotations

import collections
import json
import queue
import threading
import time
from typing import Any, Callable, Iterator

_END = object()


class DevicePrefetcher:
    """``next()`` -> ``(device_batch, wait_s)``: batches placed on the devices by a background thread.

    Args:
      host_iter: the host data iterator (numpy batches; ``get_state()`` when checkpointed).
      host_global_batch: host batch -> global device arrays with their shardings (runs in the thread).
      depth: device batches kept ready (2: double buffering; each holds one batch of device memory).
    """

    def __init__(self, host_iter: Iterator, host_global_batch: Callable[[dict], Any], *, depth: int = 2):
        if depth < 1:
            raise ValueError(f"config.data.device_prefetch={depth} must be >= 1")
        self.host_iter, self.host_global_batch, self.depth = host_iter, host_global_batch, depth
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._consumed_state = self._state_now()
        self.produced = 0
        self._thread = threading.Thread(target=self._run, name="device-prefetch", daemon=True)
        self._thread.start()

    def _state_now(self):
        get_state = getattr(self.host_iter, "get_state", None)
        return get_state() if get_state is not None else None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.host_global_batch(next(self.host_iter))
                item = (batch, self._state_now())
                self.produced += 1
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # noqa: BLE001  (re-raised in the consumer's thread)
            self._queue.put((_END, error))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Any, float]:
        start = time.perf_counter()
        batch, state = self._queue.get()
        if batch is _END:
            self._queue.put((_END, state))   # later calls raise too
            raise state
        self._consumed_state = state
        return batch, time.perf_counter() - start

    def ready(self) -> int:
        """Device batches waiting for the step now."""
        return self._queue.qsize()

    def get_state(self) -> bytes:
        """The host iterator's state after the last batch taken by ``next()`` (JSON bytes: grain's checkpoint
        handler saves them as the iterator's file)."""
        return json.dumps(self._consumed_state, indent=1).encode()

    def close(self) -> None:
        self._stop.set()
        while True:   # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)


class LaggedReader:
    """Holds step results (device arrays) and reads each ``lag`` steps after it was produced.

    ``push(x)`` returns the host value of the result pushed ``lag`` calls earlier (None until there is one);
    reading it waits only for that older step, so the steps pushed since stay in flight.
    """

    def __init__(self, lag: int, read: Callable[[Any], Any] = int):
        if lag < 0:
            raise ValueError(f"config.optim.nonfinite_check_lag={lag} must be >= 0")
        self.lag, self.read = lag, read
        self._pending: collections.deque = collections.deque()

    def push(self, value) -> Any:
        self._pending.append(value)
        if len(self._pending) <= self.lag:
            return None
        return self.read(self._pending.popleft())

    def in_flight(self) -> int:
        """Results held unread (steps the host has not waited for)."""
        return len(self._pending)
