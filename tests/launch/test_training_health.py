"""The hang watchdog and the goodput tracker wired into the real training loop (stiv_jax/train.py).

Both runs are child processes of the tiny trainer config (tests/training/trainer_testlib.py) sharing one XLA
compilation cache (the suite's, when tests/conftest.py sets one), so the second run does not compile the train
step again.
"""
import json
import os
import re
import subprocess
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TESTS_DIR, "training"))

import trainer_testlib  # noqa: E402
from stiv_jax.training import health  # noqa: E402
from stiv_jax.training import metrics as metrics_lib  # noqa: E402

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stalling_train_driver.py")
HANG_TIMEOUT_S = 5.0  # above a tiny step under a loaded CI machine, so only the stall trips it


@pytest.fixture(scope="module")
def run_driver(tmp_path_factory):
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("xla_cache"))
    env = trainer_testlib.child_env(
        XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0 "
                  "--xla_llvm_disable_expensive_passes=true",
        JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")

    def run(workdir, *args):
        return subprocess.run([sys.executable, DRIVER, str(workdir), *args], env=env, capture_output=True,
                              text=True, timeout=300)
    return run


def test_a_short_run_logs_goodput_lines_and_writes_the_figures(tmp_path, run_driver):
    workdir = tmp_path / "run"
    result = run_driver(workdir, "--total_steps=4", "--log_every=2", "--checkpoint_every=2")
    out = result.stdout
    assert result.returncode == 0, (out + result.stderr)[-4000:]
    for step in (2, 4):
        assert re.search(rf"^step {step}: goodput [\d.]+% of \d+ s \| train [\d.]+ s \([\d.]+%\) \| compile "
                         r"[\d.]+ s .*\| checkpoint .*\| data .*\| other ", out, re.M), out
    assert re.search(r"^goodput [\d.]+% of \d+ s \| .* \(whole run\)$", out, re.M), out

    rows = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [2, 4]
    for row in rows:
        assert 0.0 < row["goodput/fraction"] < 1.0
        assert row["goodput/compile_s"] > 0.0 and row["goodput/train_s"] > 0.0
    assert rows[1]["goodput/checkpoint_s"] > 0.0  # step 2's save came before step 4's row
    with open(os.path.join(workdir, "goodput.json")) as f:
        whole = json.load(f)
    assert whole["steps"] == [0, 4]
    phases = sum(whole[p] for p in health.PHASES + ("other",))
    assert phases == pytest.approx(whole["wall"], rel=1e-6)  # every second is booked exactly once
    assert whole["goodput"] == pytest.approx(whole["train"] / whole["wall"])
    assert whole["compile"] > 0.0 and whole["checkpoint"] >= rows[1]["goodput/checkpoint_s"]


def test_watchdog_ends_a_training_run_whose_data_stalls(tmp_path, run_driver):
    result = run_driver(tmp_path / "run", "--total_steps=100", "--log_every=1", "--checkpoint_every=1000",
                        "--stall_after=3", f"--hang_timeout_s={HANG_TIMEOUT_S}")
    out = result.stdout + result.stderr
    assert result.returncode == health.EXIT_HANG, out[-4000:]
    assert "training finished" not in out
    # Three steps ran (their metric and goodput lines were printed), then no step came for the timeout.
    assert re.search(r"^step 3: goodput [\d.]+% of \d+ s \| train ", result.stdout, re.M), result.stdout[-3000:]
    assert "step 4:" not in result.stdout
    idle = re.search(r"hang watchdog: no training step for ([\d.]+) s after step 3 \(limit 5 s\)", result.stderr)
    assert idle, result.stderr[-3000:]
    assert HANG_TIMEOUT_S <= float(idle.group(1)) < HANG_TIMEOUT_S + 3.0  # fired within a few polls (printed %.1f)
    # Every thread's stack: the main thread stuck in the data source, found by faulthandler's C-level dump too.
    assert 'Thread "MainThread"' in result.stderr and "data_source_stalls" in result.stderr
    assert 'Thread "stiv-hang-watchdog"' in result.stderr
    assert "Current thread" in result.stderr or "Thread 0x" in result.stderr
