r"""Step-loop overlap: a jitted step fed by an artificially slow host, the trainer's blocking loop of before beside
the double-buffered device prefetch with the non-finite guard read late (``stiv_jax.training.prefetch``).

  python bench/loop.py [--steps=24] [--host_ms=30,30,30,330] [--step_ms=150] [--lag=2] [--depth=2]

The host batches cost ``--host_ms`` in turn (sleep: a reader with bursts, e.g. a slow shard or a GC pause, plus
the real ``jax.device_put`` of a 4 MiB uint8 batch); the step is a jitted chain of matmuls calibrated to about
``--step_ms`` on this CPU. "Before": read + place the batch, dispatch the step, then read the guard's streak of
the previous step (one step in flight). "After": ``DevicePrefetcher(depth)`` places batches from a thread,
``LaggedReader(lag)`` reads the streak ``lag`` steps late. The old loop already dispatched asynchronously, so a
steady host slower or faster than the step is hidden by both; bursts are what the queue absorbs: a loop that
overlaps fully runs at max(mean host, step) per step. Prints a table and replaces the ``## loop`` section of
BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stiv_jax.training import prefetch  # noqa: E402
from report import write_section  # bench/report.py (sys.path[0] is bench/)


class SlowHost:
    """Host batches of uint8 video ``[4, 8, 128, 128, 3]`` taking ``delays_s[i % len]`` each (a bursty reader)."""

    def __init__(self, delays_s: list[float]):
        self.delays_s, self.i = delays_s, 0
        self.video = np.random.default_rng(0).integers(0, 256, (4, 8, 128, 128, 3), dtype=np.uint8)

    def __next__(self):
        time.sleep(self.delays_s[self.i % len(self.delays_s)])
        self.i += 1
        return {"video": self.video}

    def get_state(self):
        return {"i": self.i}


def make_step(repeats: int):
    @jax.jit
    def step(state, batch):
        x = state
        for _ in range(repeats):
            x = jnp.tanh(x @ state)
        mean = batch["video"].astype(jnp.float32).mean() / 255.0
        return state + 1e-6 * (x + mean), jnp.int32(0) + jnp.isnan(mean).astype(jnp.int32)
    return step


def calibrate(step_ms: float):
    state = jnp.eye(512, dtype=jnp.float32)
    batch = {"video": jnp.zeros((4, 8, 128, 128, 3), jnp.uint8)}
    step = make_step(1)
    jax.block_until_ready(step(state, batch))
    start = time.perf_counter()
    for _ in range(5):
        jax.block_until_ready(step(state, batch))
    one = (time.perf_counter() - start) / 5
    repeats = max(1, int(round(step_ms / 1000 / one)))
    step = make_step(repeats)
    jax.block_until_ready(step(state, batch))
    start = time.perf_counter()
    jax.block_until_ready(step(state, batch))
    return step, state, (time.perf_counter() - start) * 1000


def loop_before(step, state, host, steps: int) -> tuple[float, float]:
    previous, wait, start = None, 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = jax.device_put(next(host))
        wait += time.perf_counter() - t
        state, streak = step(state, batch)
        if previous is not None:
            int(previous)
        previous = streak
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / steps * 1000, wait / steps * 1000


def loop_after(step, state, host, steps: int, *, depth: int, lag: int) -> tuple[float, float, int]:
    batches = prefetch.DevicePrefetcher(host, jax.device_put, depth=depth)
    streaks = prefetch.LaggedReader(lag)
    most_in_flight, wait = 0, 0.0
    try:
        next(batches)   # the first batch is read before the loop (it is the compile's in the trainer)
        start = time.perf_counter()
        for _ in range(steps):
            batch, waited = next(batches)
            wait += waited
            state, streak = step(state, batch)
            streaks.push(streak)
            most_in_flight = max(most_in_flight, streaks.in_flight() + 1)
        jax.block_until_ready(state)
        return (time.perf_counter() - start) / steps * 1000, wait / steps * 1000, most_in_flight
    finally:
        batches.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--host_ms", default="30,30,30,330", help="host time per batch in turn (sleep), ms")
    parser.add_argument("--step_ms", type=float, default=150.0, help="target device time per step")
    parser.add_argument("--lag", type=int, default=2, help="config.optim.nonfinite_check_lag")
    parser.add_argument("--depth", type=int, default=2, help="config.data.device_prefetch")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "BENCHMARKS.md"))
    args = parser.parse_args()
    delays = [float(ms) / 1000 for ms in args.host_ms.split(",")]
    step, state, step_ms = calibrate(args.step_ms)
    before, before_wait = loop_before(step, state, SlowHost(delays), args.steps)
    after, after_wait, in_flight = loop_after(step, state, SlowHost(delays), args.steps,
                                              depth=args.depth, lag=args.lag)
    load = os.getloadavg()[0]
    header = (f"{jax.devices()[0].platform} backend, {os.cpu_count()} cores shared with other jobs (load average "
              f"{load:.1f}); host batches {args.host_ms} ms in turn (mean {1000 * sum(delays) / len(delays):.0f} ms; "
              f"sleep + device_put of 4 MiB uint8), step measured "
              f"{step_ms:.0f} ms alone, {args.steps} steps")
    table = ["| loop | ms / step | data wait ms / step | steps in flight |", "| --- | ---: | ---: | ---: |",
             f"| before: read + place the batch, then the step; guard reads the previous step | {before:.0f} | "
             f"{before_wait:.0f} | 2 |",
             f"| after: device prefetch depth {args.depth}, guard {args.lag} steps late | {after:.0f} | "
             f"{after_wait:.0f} | {in_flight} |",
             f"| after / before | {after / before:.2f} | | |"]
    print(header)
    print("\n".join(table))
    command = " ".join(["python bench/loop.py"] + sys.argv[1:])
    write_section("\n".join(["## loop", "", f"Command: `{command}`", "", header + ".", "", *table, "",
                             "Full overlap: max(mean host, step) per step (here the step); the data wait of "
                             "the first row is the bursts the single step in flight could not hide."]), args.out)


if __name__ == "__main__":
    main()
