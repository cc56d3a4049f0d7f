"""Preemption: on SIGTERM every host saves at the same step and the run exits cleanly.

Multi-process runs use jax's preemption sync manager (started by ``jax.distributed.initialize``): it catches the
scheduler's SIGTERM on any host and agrees on a step, and ``reached_preemption_sync_point(step)`` turns True on
every host at that same step. A single process has nobody to agree with: a Python SIGTERM handler sets a flag.
"""
from __future__ import annotations

import signal
import threading

import jax
from absl import logging



class PreemptionWatcher:
    """``should_stop(step)`` is True at the step every host must save at and then exit."""

    def __init__(self):
        self._signalled = False
        self._previous_handler = None
        self._multihost = jax.process_count() > 1 and jax.distributed.is_initialized()
        if not self._multihost and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step and exiting")
        print("SIGTERM received: saving a checkpoint at the next step, then exiting", flush=True)
        self._signalled = True

    def should_stop(self, step: int) -> bool:
        """Call once per step on every host, with the same ``step`` (the steps done so far)."""
        if self._multihost:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signalled

    def close(self) -> None:
        """Restores the previous SIGTERM handler."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
