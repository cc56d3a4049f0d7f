"""Exact resume after SIGKILL (also mid-save), SIGTERM preemption, restore onto another mesh, params-only loading."""
import glob
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from trainer_testlib import (DRIVER, assert_trees_equal, child_env, config_from_json, config_to_json,
                             tiny_config)

TOTAL_STEPS = 6


@pytest.fixture(scope="module")
def run_config(demo_shards, tmp_path_factory):
    config = tiny_config(demo_shards, total_steps=TOTAL_STEPS, checkpoint_every=2, keep_checkpoints=2,
                         keep_checkpoint_period=4, **{"optim.name": "adafactor", "optim.b2": 0.999})
    config.mesh.ici = dict(data=2, fsdp=4, context=1, tensor=1)
    config.mesh.rules = "fsdp"
    return config_to_json(config, str(tmp_path_factory.mktemp("config") / "config.json"))


@pytest.fixture(scope="module")
def uninterrupted(run_config, tmp_path_factory):
    from stiv_jax.train import train
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    return workdir, jax.device_get(train(config_from_json(run_config), workdir))


def _data_iter_state(workdir: str, step: int) -> list[bytes]:
    files = sorted(glob.glob(os.path.join(workdir, "checkpoints", str(step), "data_iter", "*.json")))
    assert files, f"no data_iter item at step {step}"
    return [open(f, "rb").read() for f in files]


def test_run_killed_mid_save_resumes_bit_identical(run_config, uninterrupted, tmp_path):
    from stiv_jax.train import train
    ref_dir, ref_state = uninterrupted
    workdir = str(tmp_path / "killed")
    proc = subprocess.run([sys.executable, DRIVER, run_config, workdir, "--kill-after-save=4"],
                          env=child_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    complete = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert complete and complete[-1] in (2, 4), complete        # the last complete checkpoint survived
    state = jax.device_get(train(config_from_json(run_config), workdir))
    assert int(state.step) == int(ref_state.step) == TOTAL_STEPS
    for tree in ("params", "ema_params", "opt_state"):
        assert_trees_equal(getattr(state, tree), getattr(ref_state, tree), what=tree)
    assert _data_iter_state(workdir, TOTAL_STEPS) == _data_iter_state(ref_dir, TOTAL_STEPS)
    # keep-last-2 plus the periodic keep of step 4.
    kept = sorted(int(d) for d in os.listdir(os.path.join(ref_dir, "checkpoints")) if d.isdigit())
    assert kept == [4, 6], kept


def test_restore_onto_another_mesh_and_device_count(run_config, uninterrupted):
    from stiv_jax.checkpointing import manager as ckpt
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.training import state as state_lib
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.training.optimizer import build_optimizer
    ref_dir, ref_state = uninterrupted
    config = config_from_json(run_config)
    config.mesh.ici = dict(data=1, fsdp=2, context=1, tensor=2)
    config.mesh.rules = "fsdp_tensor"
    mesh = mesh_lib.build_mesh(config.mesh, jax.devices()[:4])
    rules = mesh_lib.logical_rules(config.mesh)
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    abstract, shardings = state_lib.state_shardings(lambda: bundle.init_boxed_params(jax.random.key(0)), tx,
                                                    mesh, rules)
    manager = ckpt.make_manager(ref_dir, async_save=False)
    restored = ckpt.restore(manager, abstract_state=abstract, shardings=shardings)
    manager.close()
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.mesh.devices.size == 4
    assert_trees_equal(jax.device_get(restored), ref_state, what="state")

    # Parameters only, from the run directory: host numpy by default, or straight onto the new mesh.
    ema_host = ckpt.load_params_from_checkpoint(ref_dir)
    assert_trees_equal(ema_host, ref_state.ema_params, what="ema")
    target = ckpt.abstract_with_shardings(abstract.params, shardings.params)
    raw = ckpt.load_params_from_checkpoint(os.path.join(ref_dir, "checkpoints", "4"), use_ema=False,
                                           target=target)
    assert jax.tree.leaves(raw)[0].sharding == jax.tree.leaves(shardings.params)[0]
    with pytest.raises(FileNotFoundError, match="step 3"):
        ckpt.load_params_from_checkpoint(ref_dir, step=3)


def test_sigterm_saves_at_the_current_step_and_exits_zero(run_config, tmp_path):
    config = config_from_json(run_config)
    config.total_steps, config.checkpoint_every = 500, 1000
    config_path = config_to_json(config, str(tmp_path / "config.json"))
    workdir = str(tmp_path / "preempted")
    proc = subprocess.Popen([sys.executable, DRIVER, config_path, workdir], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and len(open(metrics).readlines()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "preempted: saved step" in out
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert len(steps) == 1 and 2 <= steps[0] < 500, steps
    last_logged = max(int(line.split('"step": ')[1].split(",")[0]) for line in open(metrics))
    assert steps[0] == last_logged
    np.testing.assert_(os.path.exists(os.path.join(workdir, "checkpoints", str(steps[0]), "data_iter")))
