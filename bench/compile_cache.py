r"""The persistent compilation cache: the demo's train-step compile without the cache, into an empty cache, and
from it (a restart), each a fresh ``python -m stiv_jax.train`` process of one step.

  python bench/compile_cache.py [--config=experiments/demo.py] [--shards=runs/demo_data]

Reads the trainer's own line "train step compiled for ... in X s" (trace + lower + compile, or the cache load).
Prints a table and replaces the ``## compile cache`` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from report import write_section  # bench/report.py (sys.path[0] is bench/)  # noqa: E402


def train_once(args, workdir: str, cache: str) -> tuple[float, float]:
    """``(compile s, process wall s)`` of a one-step run with ``config.compilation_cache_dir=cache``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"), PYTHONPATH=REPO)
    command = [sys.executable, "-m", "stiv_jax.train", f"--config={args.config}", f"--workdir={workdir}",
               "--config.total_steps=1", "--config.sample_every=0", f"--config.data.shards={args.shards}",
               f"--config.compilation_cache_dir={cache}"]
    start = time.perf_counter()
    out = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    match = re.search(r"train step compiled for .* in ([0-9.]+)s", out)
    if match is None:
        raise RuntimeError(f"no compile line in the trainer's output:\n{out[-2000:]}")
    return float(match.group(1)), wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="experiments/demo.py")
    parser.add_argument("--shards", default="runs/demo_data")
    parser.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        rows = [("no cache (config.compilation_cache_dir=none)", train_once(args, os.path.join(tmp, "a"), "none")),
                ("empty cache (first run writes it)", train_once(args, os.path.join(tmp, "b"), cache)),
                ("warm cache (a restart)", train_once(args, os.path.join(tmp, "c"), cache))]
    load = os.getloadavg()[0]
    header = (f"`{args.config}` on {os.cpu_count()} shared CPU cores (load average {load:.1f}); each row a fresh "
              f"one-step `stiv_jax.train` process")
    table = ["| run | train-step compile s | process wall s |", "| --- | ---: | ---: |"]
    table += [f"| {name} | {c:.1f} | {w:.1f} |" for name, (c, w) in rows]
    table.append(f"| warm / no cache | {rows[2][1][0] / rows[0][1][0]:.2f} | {rows[2][1][1] / rows[0][1][1]:.2f} |")
    print(header)
    print("\n".join(table))
    command = " ".join(["python bench/compile_cache.py"] + sys.argv[1:])
    write_section("\n".join(["## compile cache", "", f"Command: `{command}`", "", header + ".", "", *table, "",
                             "The compile figure is the trainer's own (trace, lower and compile, or the load from "
                             "the cache); the rest of the wall time is start-up, data, the step and the save."]),
                  args.out)


if __name__ == "__main__":
    main()
