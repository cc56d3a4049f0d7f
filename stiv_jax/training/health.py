"""Health of long runs: a hang watchdog and goodput accounting.

:class:`HangWatchdog` - a daemon thread that expects :meth:`HangWatchdog.heartbeat` once per training step. When
no step arrives for ``timeout_s`` (``startup_timeout_s`` before the first step, which includes the first
compile), it writes every thread's Python stack to stderr (``faulthandler``) and to the log, then ends the
process with ``os._exit(exit_code)``: a hung collective cannot be interrupted from Python, and a non-zero exit
lets the orchestrator (xpk ``--max-restarts``, SLURM ``--requeue``, Kubernetes) restart the job, which resumes
from its newest checkpoint.

:class:`GoodputTracker` - wall-clock accounting of where a run's time goes: ``train`` (step dispatch and device
time the loop waits for), ``compile`` (jax tracing, lowering and XLA compilation, measured through
``jax.monitoring`` wherever it happens, and taken out of the phase it happened in), ``checkpoint``, ``data``
(waiting for the input pipeline), ``eval`` and ``other`` (everything unaccounted).
:meth:`GoodputTracker.summary_line` renders one log line; goodput is the ``train`` share of wall time.

  watchdog = HangWatchdog(timeout_s=600, startup_timeout_s=3600).start()
  goodput = GoodputTracker()
  for step in ...:
      with goodput.phase("data"):
          batch = next(data_iter)
      with goodput.phase("train"):
          state, metrics = train_step(state, batch)
      watchdog.heartbeat(step)
      if step % log_every == 0:
          logging.info(goodput.summary_line())
"""
from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
import traceback
import weakref
from typing import Callable, Iterator

logger = logging.getLogger(__name__)

# Exit status of a watchdog kill (distinct from crashes, so restarts caused by hangs show up in job history).
EXIT_HANG = 42

PHASES = ("train", "compile", "checkpoint", "data", "eval")

# jax.monitoring events that together make up compile time (jax/_src/dispatch.py).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def format_all_stacks() -> str:
    """Every live thread's Python stack, with thread names, as text."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f'Thread "{names.get(ident, "?")}" (ident {ident}):\n'
                     + "".join(traceback.format_stack(frame)))
    return "\n".join(parts)


class HangWatchdog:
    """Kills the process, after dumping every thread's stack, when training stops making steps.

    Args:
      timeout_s: longest allowed gap between two heartbeats.
      startup_timeout_s: longest allowed wait for the first heartbeat (covers the first compile and restore);
        defaults to ``timeout_s``.
      exit_code: process exit status after a hang (default :data:`EXIT_HANG`).
      poll_interval_s: how often the thread checks (default: a tenth of the smallest timeout, at most 10 s).
      on_hang: test hook, called with the report text instead of exiting.
    """

    def __init__(self, timeout_s: float, *, startup_timeout_s: float | None = None, exit_code: int = EXIT_HANG,
                 poll_interval_s: float | None = None, on_hang: Callable[[str], None] | None = None):
        if timeout_s <= 0:
            raise ValueError(f"watchdog timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.startup_timeout_s = float(startup_timeout_s if startup_timeout_s is not None else timeout_s)
        self.exit_code = exit_code
        self.poll_interval_s = poll_interval_s or min(10.0, min(self.timeout_s, self.startup_timeout_s) / 10)
        self._on_hang = on_hang
        self._last_beat = time.monotonic()
        self._last_step: int | None = None
        self._paused = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> "HangWatchdog":
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="stiv-hang-watchdog", daemon=True)
        self._thread.start()
        return self

    def heartbeat(self, step: int | None = None) -> None:
        """Marks progress (call once per training step)."""
        with self._lock:
            self._last_beat = time.monotonic()
            self._last_step = step if step is not None else (self._last_step or 0) + 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Suspends the watchdog around a known-long operation (e.g. a blocking final checkpoint or eval)."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                self._last_beat = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_interval_s * 2 + 1)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            with self._lock:
                if self._paused:
                    continue
                idle = time.monotonic() - self._last_beat
                step = self._last_step
            limit = self.startup_timeout_s if step is None else self.timeout_s
            if idle > limit:
                self._fire(idle, step)
                return

    def _fire(self, idle_s: float, step: int | None) -> None:
        where = "before the first step" if step is None else f"after step {step}"
        limit = self.startup_timeout_s if step is None else self.timeout_s
        header = (f"stiv_jax hang watchdog: no training step for {idle_s:.1f} s {where} (limit {limit:.0f} s); "
                  f"dumping all thread stacks and exiting with status {self.exit_code} so the job is restarted")
        report = header + "\n" + format_all_stacks()
        if self._on_hang is not None:
            self._on_hang(report)
            return
        logger.error(report)
        sys.stderr.write(header + "\n")
        sys.stderr.flush()
        # faulthandler writes from C: it works even when logging or the GIL holder is wedged.
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(self.exit_code)


class _CompileListener:
    """One process-wide jax.monitoring listener fanning compile durations out to live trackers."""

    _trackers: "weakref.WeakSet[GoodputTracker]" = weakref.WeakSet()
    _registered = False
    _lock = threading.Lock()

    @classmethod
    def add(cls, tracker: "GoodputTracker") -> None:
        with cls._lock:
            cls._trackers.add(tracker)
            if not cls._registered:
                import jax.monitoring
                jax.monitoring.register_event_duration_secs_listener(cls._on_event)
                cls._registered = True

    @classmethod
    def _on_event(cls, event: str, duration_secs: float, **kwargs) -> None:
        if event in COMPILE_EVENTS:
            for tracker in list(cls._trackers):
                tracker._add_compile(duration_secs)


class GoodputTracker:
    """Accumulates wall-clock seconds per phase; see the module doc.

    Args:
      track_compiles: attribute jax compile time to ``compile`` via ``jax.monitoring`` (default True).
      clock: seconds clock (test hook).
    """

    def __init__(self, *, track_compiles: bool = True, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._start = clock()
        self._seconds = {p: 0.0 for p in PHASES}
        self._lock = threading.Lock()
        self._active: list[str] = []
        self._compile_in_active = 0.0
        if track_compiles:
            _CompileListener.add(self)

    def _add_compile(self, seconds: float) -> None:
        with self._lock:
            self._seconds["compile"] += seconds
            if self._active:
                self._compile_in_active += seconds

    def add(self, phase: str, seconds: float) -> None:
        """Books ``seconds`` to ``phase`` directly (for time measured elsewhere)."""
        if phase not in self._seconds:
            raise ValueError(f"unknown goodput phase {phase!r}; expected one of {PHASES}")
        with self._lock:
            self._seconds[phase] += seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the enclosed block as ``name``; compiles inside it are booked to ``compile`` instead."""
        if name not in self._seconds:
            raise ValueError(f"unknown goodput phase {name!r}; expected one of {PHASES}")
        with self._lock:
            if self._active:
                raise RuntimeError(f"goodput phase {name!r} opened inside phase {self._active[-1]!r}")
            self._active.append(name)
            self._compile_in_active = 0.0
        begin = self._clock()
        try:
            yield
        finally:
            elapsed = self._clock() - begin
            with self._lock:
                self._active.pop()
                # Compiles seen inside the block were booked to `compile` already: take them out of the block's
                # own time (an explicit "compile" block books its whole elapsed time once).
                self._seconds["compile"] -= self._compile_in_active if name == "compile" else 0.0
                own = elapsed if name == "compile" else elapsed - self._compile_in_active
                self._seconds[name] += max(own, 0.0)
                self._compile_in_active = 0.0

    def summary(self) -> dict[str, float]:
        """Seconds per phase plus ``other``, ``wall`` and ``goodput`` (train share of wall time, 0..1)."""
        with self._lock:
            seconds = dict(self._seconds)
        wall = max(self._clock() - self._start, 1e-9)
        seconds["other"] = max(wall - sum(seconds.values()), 0.0)
        seconds["wall"] = wall
        seconds["goodput"] = seconds["train"] / wall
        return seconds

    def summary_line(self) -> str:
        """One log line: ``goodput 81.2% of 3600 s | train 2923 s | compile 95 s (2.6%) | ...``."""
        s = self.summary()
        parts = [f"goodput {100 * s['goodput']:.1f}% of {s['wall']:.0f} s"]
        for name in PHASES + ("other",):
            parts.append(f"{name} {s[name]:.1f} s ({100 * s[name] / s['wall']:.1f}%)")
        return " | ".join(parts)
