"""Hang watchdog (in a subprocess: it really exits) and goodput accounting."""
import os
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import pytest

from stiv_jax.training import health

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HUNG_JOB = textwrap.dedent("""
    import threading, time
    from stiv_jax.training.health import HangWatchdog

    def stuck_in_fake_all_reduce():
        time.sleep(60)

    watchdog = HangWatchdog(timeout_s=0.5, startup_timeout_s=5, exit_code=43).start()
    for step in range(3):
        watchdog.heartbeat(step)
        time.sleep(0.05)
    threading.Thread(target=time.sleep, args=(60,), name="grain-worker-feeder", daemon=True).start()
    stuck_in_fake_all_reduce()
    print("unreachable")
""")


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_watchdog_dumps_every_stack_and_exits_non_zero_when_steps_stop():
    result = run_python(HUNG_JOB)
    assert result.returncode == 43, result.stderr
    assert "unreachable" not in result.stdout
    assert "hang watchdog: no training step for" in result.stderr and "after step 2" in result.stderr
    # The stuck frame of the main thread and the other thread's name both appear in the dump.
    assert "stuck_in_fake_all_reduce" in result.stderr
    assert 'Thread "grain-worker-feeder"' in result.stderr
    assert "Current thread" in result.stderr or "Thread 0x" in result.stderr  # faulthandler's C-level dump


def test_watchdog_stays_quiet_while_steps_keep_coming():
    code = textwrap.dedent("""
        import time
        from stiv_jax.training.health import HangWatchdog
        watchdog = HangWatchdog(timeout_s=0.5).start()
        for step in range(15):
            watchdog.heartbeat(step)
            time.sleep(0.1)
        with watchdog.paused():   # a known-long blocking save
            time.sleep(1.0)
        watchdog.heartbeat(); watchdog.stop()
        print("finished")
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "finished"


def test_startup_budget_applies_before_the_first_step():
    fired = []
    watchdog = health.HangWatchdog(timeout_s=0.05, startup_timeout_s=0.6, poll_interval_s=0.02,
                                   on_hang=fired.append).start()
    time.sleep(0.3)
    assert not fired  # the 0.05 s step budget does not apply to the first compile
    time.sleep(0.6)
    watchdog.stop()
    assert len(fired) == 1 and "before the first step" in fired[0]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_goodput_books_phases_and_other():
    clock = FakeClock()
    tracker = health.GoodputTracker(track_compiles=False, clock=clock)
    with tracker.phase("data"):
        clock.now += 1.0
    with tracker.phase("train"):
        clock.now += 6.0
    with tracker.phase("checkpoint"):
        clock.now += 2.0
    clock.now += 1.0  # logging, host work: "other"
    s = tracker.summary()
    assert (s["data"], s["train"], s["checkpoint"], s["other"], s["wall"]) == (1.0, 6.0, 2.0, 1.0, 10.0)
    assert s["goodput"] == pytest.approx(0.6)
    line = tracker.summary_line()
    assert line.startswith("goodput 60.0% of 10 s | train 6.0 s (60.0%) | compile 0.0 s (0.0%)")
    assert "data 1.0 s (10.0%)" in line and "other 1.0 s (10.0%)" in line


def test_goodput_rejects_unknown_and_nested_phases():
    tracker = health.GoodputTracker(track_compiles=False)
    with pytest.raises(ValueError, match="unknown goodput phase 'trian'"):
        with tracker.phase("trian"):
            pass
    with pytest.raises(RuntimeError, match="opened inside phase 'train'"):
        with tracker.phase("train"):
            with tracker.phase("data"):
                pass


def test_goodput_moves_jit_compile_time_out_of_the_train_phase():
    tracker = health.GoodputTracker()

    @jax.jit
    def step(x):
        for _ in range(30):  # enough ops that the compile takes measurable time
            x = jnp.sin(x) @ x.T + 1.0
        return x

    x = jnp.ones((16, 16))
    y = (x + 1).block_until_ready()          # (eager ops compile too: do it before the measurement)
    with tracker.phase("train"):
        step(x).block_until_ready()          # traces + compiles + runs
    first = tracker.summary()
    assert first["compile"] > 0.0
    with tracker.phase("train"):
        step(y).block_until_ready()          # cached: no compile
    second = tracker.summary()
    assert second["compile"] == first["compile"]
    assert second["train"] > first["train"]
    # train + compile never exceed the wall time: compile was not counted twice
    assert second["train"] + second["compile"] <= second["wall"] + 1e-6
