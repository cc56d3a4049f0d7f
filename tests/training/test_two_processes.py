"""Two processes on localhost (CPU collectives, 4 fake devices each) train like one process with 8 devices."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from trainer_testlib import (DRIVER, child_env, config_from_json, config_to_json, synthetic_iterator_factory,
                             tiny_config)
from numerics import assert_close


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_matches_single_process_with_same_global_batch(tmp_path, monkeypatch):
    config = tiny_config(total_steps=3, checkpoint_every=3, **{"optim.name": "adafactor", "optim.b2": 0.999})
    config.mesh.ici = dict(data=2, fsdp=-1, context=1, tensor=1)
    config.mesh.rules = "fsdp"
    config_path = config_to_json(config, str(tmp_path / "config.json"))
    out = str(tmp_path / "two_process_params.npz")
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, DRIVER, config_path, str(tmp_path / "two"), "--synthetic-data", f"--dump-params={out}"],
        env=child_env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                      STIV_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", STIV_NUM_PROCESSES="2",
                      STIV_PROCESS_ID=str(i), STIV_INIT_TIMEOUT_S="300"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]

    # Meanwhile, the single-process reference on this process's 8 devices.
    from stiv_jax import train as train_lib
    reference_config = config_from_json(config_path)
    monkeypatch.setattr(train_lib, "make_iterator", synthetic_iterator_factory(reference_config))
    reference = jax.device_get(train_lib.train(reference_config, str(tmp_path / "one")).params)

    logs = [p.communicate(timeout=900)[0] for p in procs]
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i}:\n{logs[i][-3000:]}"
    assert "2 process(es)" in logs[0]
    two = np.load(out)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(reference)[0]}
    assert sorted(flat) == sorted(two.files)
    for key, value in flat.items():
        assert_close(two[key], value, ulps=64, what=key)   # 3 steps, gradients all-reduced over 2 processes
    # Both processes wrote one shared checkpoint of the final step.
    assert os.path.isdir(str(tmp_path / "two" / "checkpoints" / "3" / "state"))
