"""End-to-end: the demo config trains on real clips, checkpoints round-trip, and sampling writes an mp4."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT, demo_config
from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.data import video_io
from stiv_jax.training import metrics as metrics_lib


@pytest.fixture(scope="module")
def trained_run(demo_shards, tmp_path_factory):
    """The demo config trained for 20 steps on the 8 fake devices."""
    from stiv_jax.train import train
    assert jax.device_count() == 8
    workdir = str(tmp_path_factory.mktemp("demo_run"))
    config = demo_config(demo_shards, total_steps=20, checkpoint_every=10, log_every=1)
    state = train(config, workdir)
    return config, workdir, state


def test_demo_trains_20_steps_on_8_devices_with_falling_loss(trained_run):
    _, workdir, state = trained_run
    assert int(state.step) == 20
    losses = [r["loss"] for r in metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))]
    assert len(losses) == 20 and np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    # The parameters really are laid out over the 8-device mesh.
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == 8
    assert os.path.exists(os.path.join(workdir, "loss.png"))


def test_checkpoint_restores_identical_parameters(trained_run):
    from stiv_jax.parallel import mesh as mesh_lib
    from stiv_jax.training import state as state_lib
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.training.optimizer import build_optimizer
    config, workdir, state = trained_run
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    mesh = mesh_lib.build_mesh(config.mesh)
    rules = mesh_lib.logical_rules(config.mesh)
    abstract, shardings = state_lib.state_shardings(lambda: bundle.init_boxed_params(jax.random.key(0)), tx,
                                                    mesh, rules)
    manager = ckpt.make_manager(workdir, async_save=False)
    assert manager.latest_step() == 20
    restored = ckpt.restore(manager, abstract_state=abstract, shardings=shardings)
    manager.close()
    for name, tree in [("params", "params"), ("ema", "ema_params"), ("opt", "opt_state")]:
        for a, b in zip(jax.tree.leaves(getattr(state, tree)), jax.tree.leaves(getattr(restored, tree))):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_sample_cli_writes_a_readable_mp4(trained_run, tmp_path):
    _, workdir, _ = trained_run
    out = str(tmp_path / "sample.mp4")
    env = dict(os.environ, XLA_FLAGS="")
    subprocess.run([sys.executable, "-m", "stiv_jax.sample", f"--workdir={workdir}", "--prompt=a rabbit",
                    f"--out={out}", "--steps=4"], check=True, cwd=REPO_ROOT, env=env)
    frames = video_io.decode_frames(out)
    assert frames.shape == (8, 64, 64, 3)
    assert os.path.exists(str(tmp_path / "sample.gif"))
