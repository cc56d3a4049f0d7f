"""The local multi-process launcher's per-process commands.

Training the demo config on 2 processes with it is tested by the docs test (docs/multi_process.md), and
processes joining / failing to join by tests/launch/test_distributed.py.
"""
import os
import shlex
import sys

from stiv_jax.launch import local

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def test_dry_run_prints_one_command_per_process(capsys):
    assert local.main(["--num_processes=2", "--devices_per_process=3", "--dry-run", "--",
                       "--config=experiments/demo.py", "--workdir=runs/x"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for process_id, line in enumerate(lines):
        argv = shlex.split(line)
        port = argv[3].rsplit(":", 1)[1]
        assert argv == ["env", "JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=3",
                        f"STIV_COORDINATOR_ADDRESS=localhost:{port}", "STIV_NUM_PROCESSES=2",
                        f"STIV_PROCESS_ID={process_id}", "STIV_EXPECTED_PROCESSES=2", sys.executable, "-m",
                        "stiv_jax.train", "--config=experiments/demo.py", "--workdir=runs/x"]


def test_a_killed_process_is_named_with_its_signal_and_the_job_exits_128_plus_it(monkeypatch):
    import io
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), REPO]))
    out = io.StringIO()
    status = local.launch(2, [], module="killed_peer_module", devices_per_process=1, out=out)
    assert status == 128 + 9, out.getvalue()
    assert "[launcher] process 1 (pid " in out.getvalue() and ") was killed by SIGKILL; stopping the others" \
        in out.getvalue()
    assert local.describe_exit(3) == ("exited with status 3", 3)
