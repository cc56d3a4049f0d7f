"""Export: the safetensors export gives the checkpoint's velocity, and any safetensors reader opens it."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

from conftest import REPO_ROOT
from stiv_jax.checkpointing import exports
from stiv_jax import export as export_lib
from stiv_jax.model.bundle import build_model_bundle
from test_transitions import local_config, save_stage, velocity


@pytest.fixture(scope="module")
def t2v_stage(tmp_path_factory):
    """A finished tiny T2V-256 run (EMA differs from the raw parameters), exported by both tests."""
    workdir = tmp_path_factory.mktemp("t2v_256_run")
    config = local_config("t2v_256")
    bundle, state = save_stage(config, workdir, seed=5)
    return workdir, config, bundle, state


def test_exported_velocity_equals_the_checkpoint_ema_velocity(tmp_path, t2v_stage):
    run, config, bundle, state = t2v_stage
    out = tmp_path / "export"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-m", "stiv_jax.export", f"--workdir={run}", f"--out={out}"],
                   check=True, cwd=REPO_ROOT, env=env)
    assert exports.is_export(str(out)) and not exports.is_export(str(run))
    assert all(os.stat(p).st_mode & 0o044 == 0o044 for p in out.iterdir())   # readable by group and others
    loaded_config, params = exports.load_exported(str(out))
    assert loaded_config.to_dict() == json.loads(json.dumps(config.to_dict()))
    latents = jax.random.normal(jax.random.key(0), (2,) + bundle.latent_shape)
    want = velocity(bundle, jax.device_get(state.ema_params), latents)
    got = velocity(build_model_bundle(loaded_config), params, latents)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).mean() > 1e-2
    # A plain numpy safetensors reader sees every EMA tensor under its path; the card and config are written.
    flat = exports.flatten(jax.device_get(state.ema_params))
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        assert set(f.keys()) == set(flat)
        np.testing.assert_array_equal(f.get_tensor("dit/patch_embed/proj/kernel"), flat["dit/patch_embed/proj/kernel"])
    assert "load_exported" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["export"]["step"] == 7


def test_bf16_export_is_sharded_with_an_index_and_close_to_fp32(tmp_path, t2v_stage):
    run, config, bundle, state = t2v_stage
    summary = export_lib.export(str(run), str(tmp_path / "bf16"), dtype="bf16", max_shard_bytes=50_000)
    assert len(summary["files"]) > 1
    index = json.loads((tmp_path / "bf16" / export_lib.INDEX).read_text())
    assert set(index["weight_map"]) == set(exports.flatten(jax.device_get(state.ema_params)))
    _, params = exports.load_exported(str(tmp_path / "bf16"))
    assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(params))
    latents = jax.random.normal(jax.random.key(1), (2,) + bundle.latent_shape)
    want = velocity(bundle, jax.device_get(state.ema_params), latents)
    got = velocity(bundle, jax.tree.map(lambda v: v.astype(jnp.float32), params), latents)
    assert np.abs(got - want).mean() < 0.02 * np.abs(want).mean()


def test_export_cli_fails_in_one_line_on_a_missing_workdir_and_creates_nothing(tmp_path):
    missing, out = tmp_path / "no_run", tmp_path / "out"
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "stiv_jax.export", f"--workdir={missing}", f"--out={out}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-2:] == [f"error: FileNotFoundError: --workdir='{missing}' does not exist",
                                             "  (full trace: STIV_TRACE=1)"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
    assert not missing.exists() and not out.exists()
