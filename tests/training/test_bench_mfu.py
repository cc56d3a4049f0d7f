"""bench/mfu.py runs the real train step end to end at a tiny size on the CPU, so the GPU bench cannot rot."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from stiv_jax.training import profile_breakdown


def test_mfu_bench_runs_tiny_on_cpu_and_reports_every_field(tmp_path):
    out = tmp_path / "rows.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=REPO_ROOT)
    run = subprocess.run(
        [sys.executable, "bench/mfu.py", "--size=tiny", "--resolution=32", "--frames=4", "--batches=1",
         "--steps=1", "--warmup=1", "--remat=self_attention", "--dtype=float32", "--peak_tflops=1.0", "--profile", f"--json={out}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and not rows[0]["oom"]
    row = rows[0]
    for key in ("step_s", "cpu_s", "flops", "tflops", "mfu", "peak_memory_gib", "profile", "device"):
        assert key in row, key
    assert row["step_s"] > 0 and row["flops"] > 0 and row["peak_memory_gib"] > 0
    # the MFU arithmetic of the row: achieved FLOP/s over the given 1 TFLOP/s peak
    assert abs(row["mfu"] - row["flops"] / row["step_s"] / 1e12) < 1e-9
    assert abs(row["tflops"] - row["flops"] / row["step_s"] / 1e12) < 1e-9
    assert set(row["profile"]) == set(profile_breakdown.CATEGORIES) and sum(row["profile"].values()) > 0
    assert "| XLA flags | attention | remat |" in run.stdout and "largest batch per device" in run.stdout
    assert "profile (" in run.stdout


def test_profile_categories_come_from_the_op_names():
    hlo = "\n".join([
        '  %fusion.1 = bf16[8]{0} fusion(%a), kind=kLoop, calls=%f1, metadata={op_name="jit(step)/jvp(STIVDiT)/blocks/spatial_attn/dot_general"}',
        '  %fusion.2 = bf16[8]{0} fusion(%a), kind=kLoop, calls=%f2, metadata={op_name="jit(step)/transpose(jvp(STIVDiT))/blocks/ffn/wi/dot_general"}',
        '  %fusion.3 = f32[8]{0} fusion(%a), kind=kLoop, calls=%f3, metadata={op_name="jit(step)/jvp(STIVDiT)/blocks/rsqrt"}',
        '  %fusion.4 = f32[8]{0} fusion(%a), kind=kLoop, calls=%f4, metadata={op_name="jit(step)/adafactor/mul"}',
        '  %all-reduce.5 = f32[8]{0} all-reduce(%a), replica_groups={}, to_apply=%add',
    ])
    categories = profile_breakdown.op_categories(hlo)
    assert categories == {"fusion.1": "attention", "fusion.2": "ffn", "fusion.3": "norms", "fusion.4": "optimizer",
                          "all-reduce.5": "collectives"}
    events = [{"ph": "X", "name": n, "dur": d, "args": {"hlo_op": n, "hlo_module": "jit_step"}}
              for n, d in [("fusion.1", 300), ("fusion.2", 100), ("all-reduce.5", 100), ("other", 500)]]
    seconds = profile_breakdown.breakdown(events, categories, module="jit_step")
    assert (seconds["attention"], seconds["collectives"], seconds["other"]) == pytest.approx((300e-6, 100e-6, 500e-6))
    assert profile_breakdown.format_breakdown(seconds).startswith("attention 30%")
