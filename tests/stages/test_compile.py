"""The ahead-of-time fit check compiles the real train step per bucket and gives a verdict against HBM."""
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from stiv_jax import compile as compile_lib


def test_cpu8_fit_check_of_a_tiny_config_compiles_every_bucket(tmp_path):
    """Two buckets, one compile each, through the CLI (which sets up the 8 host devices itself)."""
    env = dict(os.environ, XLA_FLAGS="")
    run = subprocess.run(
        [sys.executable, "-m", "stiv_jax.compile", "--config=experiments/t2v_256.py:runlocal", "--topology=cpu-8",
         "--hbm_gib=0.004", "--roofline_chip=h100", "--config.data.buckets=((4, 32, 32, 8), (2, 32, 48, 16))"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in run.stdout.splitlines() if "TFLOP per chip" in line]
    assert len(lines) == 2, run.stdout + run.stderr[-3000:]
    assert lines[0].startswith("  4x32x32 batch 8 (1/chip)") and lines[1].startswith("  2x32x48 batch 16 (2/chip)")
    # 4 MiB per chip holds the tiny model's state but not the bigger bucket's step: one verdict each way.
    verdicts = ["DOES NOT FIT" in line for line in lines]
    peaks = [float(line.split("peak ")[1].split(" GiB")[0]) for line in lines]
    assert all(p > 0 for p in peaks)
    assert verdicts == [p > 0.004 for p in peaks]
    assert run.returncode == (1 if any(verdicts) else 0)
    # Each bucket's roofline on the named chip, from its HLO counted with loop trip counts.
    roofs = [line for line in run.stdout.splitlines() if line.startswith("  roofline H100 SXM: compute")]
    assert len(roofs) == 2 and all("MFU" in line and "-bound" in line for line in roofs), run.stdout
    costs = [line for line in run.stdout.splitlines() if line.startswith("  HLO cost per chip:")]
    assert len(costs) == 2 and all("all-" in line for line in costs), costs   # the data-parallel gradient sum


def test_topology_names_map_to_libtpu_grids_and_hbm():
    v5p = compile_lib.parse_topology("v5p-256")
    assert (v5p.chips, v5p.topology_name, v5p.hbm_bytes) == (128, "v5p:4x4x8", 95 * compile_lib.GiB)
    v5e = compile_lib.parse_topology("v5e-256")
    assert (v5e.chips, v5e.topology_name, v5e.hbm_bytes) == (256, "v5e:16x16", 16 * compile_lib.GiB)
    assert compile_lib.parse_topology("v4-32").topology_name == "v4:2x2x4"
    assert compile_lib.parse_topology("v6e-64").topology_name == "v6e:8x8"
    with pytest.raises(ValueError, match="v5p slices come in sizes"):
        compile_lib.parse_topology("v5p-12")
    with pytest.raises(ValueError, match=r"'tpu-8' is not a known slice name; valid: v4-N .* v5e-N \(chips: 1, 4"):
        compile_lib.parse_topology("tpu-8")
    assert compile_lib.parse_topology("v5litepod-16").topology_name == "v5e:4x4"   # Cloud TPU's name for v5e


def test_tpu_topology_compiles_on_this_host_or_names_the_missing_libtpu():
    import importlib.util
    topology = compile_lib.parse_topology("v5e-4")
    if importlib.util.find_spec("libtpu") is None:
        with pytest.raises(RuntimeError, match=r"pip install 'jax\[tpu\]"):
            compile_lib.topology_devices(topology)
    else:
        devices = compile_lib.topology_devices(topology)
        assert len(devices) == 4 and "v5 lite" in devices[0].device_kind.lower()
