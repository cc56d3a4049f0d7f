"""Metric sinks: console, JSONL, TensorBoard (tensorboardX), and a loss-curve PNG."""
from __future__ import annotations

import json
import os
import time

import jax
import numpy as np


def _json_number(value: float) -> float | str:
    """A float as JSON allows: non-finite values become the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    return value if np.isfinite(value) else str(value)


class MetricWriter:
    """Writes scalar metrics of a step to ``workdir/metrics.jsonl`` and TensorBoard (process 0 only).

    Every line is strict JSON: a NaN or infinite value is written as the string ``"nan"``, ``"inf"`` or
    ``"-inf"`` (``read_metrics`` turns them back into floats).
    """

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        scalars = {k: float(np.asarray(v)) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            row = {"step": int(step), **{k: _json_number(v) for k, v in scalars.items()}}
            f.write(json.dumps(row, allow_nan=False) + "\n")
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class StepTimer:
    """Wall time per step and time spent waiting for data, averaged since the last ``summary``."""

    def __init__(self):
        self._start = time.perf_counter()
        self._steps = 0
        self._data_wait = 0.0
        self._flops = 0.0

    def step_done(self, *, data_wait: float, flops: float = 0.0) -> None:
        """Books one step; ``flops`` is that step's count (buckets differ), else ``summary``'s ``step_flops``."""
        self._steps += 1
        self._data_wait += data_wait
        self._flops += flops

    def summary(self, *, step_flops: float | None = None, num_devices: int, peak_tflops: float | None) -> dict:
        """``step_time_s``, ``data_wait_s``, ``tflops_per_device`` and ``mfu`` (when the peak is known); resets.

        The FLOPs are the mean of the counts given to ``step_done`` since the last summary, or ``step_flops``.
        """
        now = time.perf_counter()
        steps = max(self._steps, 1)
        step_flops = self._flops / steps if self._flops else float(step_flops or 0.0)
        step_time = (now - self._start) / steps
        out = {"step_time_s": step_time, "data_wait_s": self._data_wait / steps,
               "steps_per_sec": 1.0 / step_time,
               "tflops_per_device": step_flops / step_time / num_devices / 1e12}
        if peak_tflops:
            out["mfu"] = out["tflops_per_device"] / peak_tflops
        self._start, self._steps, self._data_wait, self._flops = now, 0, 0.0, 0.0
        return out


def format_row(step: int, row: dict) -> str:
    """One console line for a metrics row."""
    keys = ("loss", "grad_norm", "learning_rate", "step_time_s", "data_wait_s", "tflops_per_device", "mfu",
            "skipped_steps")
    return f"step {step}: " + " ".join(f"{k}={row[k]:.4g}" for k in keys if k in row)


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics JSONL file (later rows for a repeated step win, as after a resume); the strings
    ``"nan"``/``"inf"``/``"-inf"`` come back as floats."""
    rows: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = {k: float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v
                       for k, v in json.loads(line).items()}
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]


def plot_loss(metrics_path: str, out_png: str) -> None:
    """Plots the loss (and a moving average) against the step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, alpha=0.4, label="loss")
    if len(loss) >= 10:
        k = max(2, len(loss) // 20)
        ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, mode="valid"), label=f"moving average ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
