"""The local multi-process launcher: exact per-process commands, and the demo config trained on 2 processes."""
import json
import os
import shlex
import subprocess
import sys

from stiv_jax.launch import local

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The demo config shrunk so that two processes compile and run two steps in CI time.
TINY = ["--config.model.depth=1", "--config.model.width=32", "--config.model.num_heads=2", "--config.text.dim=32",
        "--config.data.batch_size=2", "--config.data.frames=4", "--config.data.resolution=32",
        "--config.log_every=1"]


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


def test_demo_config_trains_on_two_processes(demo_shards, tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "stiv_jax.launch.local", "--num_processes=2", "--devices_per_process=1", "--",
         "--config=experiments/demo.py", f"--workdir={workdir}", "--config.total_steps=2",
         f"--config.data.shards={demo_shards}", *TINY],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "[p0] mesh {'data': 2, 'fsdp': 1, 'context': 1, 'tensor': 1} over 2 devices, 2 process(es)" \
        in result.stdout
    assert (workdir / "checkpoints" / "2").is_dir()
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert all(0.0 < row["loss"] < 10.0 for row in rows)
