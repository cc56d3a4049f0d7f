"""bench/data.py runs end to end at a tiny size (every row, the targets line, the section it writes), so the data
bench cannot rot unnoticed (a config key the pipeline started to require once broke it)."""
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT


def test_data_bench_runs_tiny_and_writes_every_row(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=REPO_ROOT)
    run = subprocess.run(
        [sys.executable, "bench/data.py", "--seconds=0.3", "--rounds=1", "--frames=4", "--resolution=64",
         f"--out={out}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    section = out.read_text().split("\n## data\n", 1)[1]   # the file starts with its "# Benchmarks" title
    assert "Command: `python bench/data.py --seconds=0.3" in section
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines() if line.startswith("| ")}
    for where in ("in-process", "2 worker processes"):
        for loader in ("decode floor (libavcodec only)", "grain (ours)"):
            line = rows[f"{loader}, {where}"]
            cpu_ms, rate = (float(x) for x in line.split(" | ")[1:3])
            assert cpu_ms > 0 and rate > 0, line
        assert rows[f"decode floor (libavcodec only), {where}"].split(" | ")[3] == "1.00"
    latent = next(line for name, line in rows.items() if name.startswith("grain latent path"))
    assert re.search(r"\d+x the step's need", latent)
    assert "the decode floor of its worker count (target <= 1.3x)" in section
