"""LoRA fine-tune from a finished stage: adapter export with the base's fingerprint, merged export, base + adapter
sampling, and a mismatched base refused."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT
from stiv_jax.checkpointing import exports
from stiv_jax import adapters
from stiv_jax.sampling.run import load_params
from stiv_jax.model.bundle import build_model_bundle
from test_transitions import local_config, perturbed, save_stage, velocity
from numerics import assert_close


def _run(*args):
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    return proc


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A finished tiny t2v_256 base and a LoRA SFT run started from it, with live (non-zero) adapters."""
    root = tmp_path_factory.mktemp("root")
    base_dir = root / "local" / "t2v_256"
    _, base_state = save_stage(local_config("t2v_256"), base_dir, seed=2)
    config = __import__("experiments.sft_256", fromlist=["x"]).get_config(f"runlocal,root={root}")
    sft_dir = root / "local" / "sft_256"
    # The fine-tune starts from the base (transition), then its adapters are moved as training would.
    from stiv_jax.stages import transition
    from test_transitions import fresh_state
    bundle, state = fresh_state(config)
    state = transition.initialize_from_sources(config, state, log=lambda _: None)
    flat = exports.flatten(state.params)
    moved = perturbed({k: v for k, v in flat.items() if adapters.is_adapter(k)}, seed=9)
    params = exports.unflatten({**flat, **exports.flatten(moved)})
    state = state.replace(params=params, ema_params=params)
    from stiv_jax.checkpointing import manager as ckpt
    manager = ckpt.make_manager(str(sft_dir), async_save=False)
    ckpt.save(manager, 3, state=state, config=config)
    manager.wait_until_finished()
    manager.close()
    return base_dir, base_state, sft_dir, config, bundle, jax.device_get(params)


def test_adapter_export_applies_to_its_base_and_is_refused_on_another(tmp_path, lora_run):
    base_dir, base_state, sft_dir, config, bundle, params = lora_run
    out = tmp_path / "adapter"
    proc = _run("stiv_jax.export", f"--workdir={sft_dir}", f"--out={out}", "--adapter")
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors import safe_open
    with safe_open(str(out / adapters.ADAPTER), framework="numpy") as f:
        assert all(adapters.is_adapter(k) for k in f.keys()) and f.metadata()["base_fingerprint"]
    latents = jax.random.normal(jax.random.key(0), (2,) + bundle.latent_shape)
    want = velocity(bundle, params, latents)
    loaded_config, loaded_bundle, loaded = load_params(str(base_dir), adapter=str(out))
    np.testing.assert_array_equal(velocity(loaded_bundle, loaded, latents), want)
    assert np.abs(want - velocity(build_model_bundle(local_config("t2v_256")),
                                  jax.device_get(base_state.ema_params), latents)).max() > 1e-3  # adapters matter
    # Another base (the raw instead of the EMA weights) is refused, naming the fingerprints.
    with pytest.raises(exports.AdapterMismatchError, match="fingerprint"):
        load_params(str(base_dir), use_ema=False, adapter=str(out))


def test_merged_export_equals_base_plus_adapter(tmp_path, lora_run):
    base_dir, _, sft_dir, config, bundle, params = lora_run
    out = tmp_path / "merged"
    proc = _run("stiv_jax.export", f"--workdir={sft_dir}", f"--out={out}", "--merge_lora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged_config, merged = exports.load_exported(str(out))
    assert merged_config.finetune.lora.rank == 0
    assert not any(adapters.is_adapter(k) for k in exports.flatten(merged))
    merged_bundle = build_model_bundle(merged_config)
    latents = jax.random.normal(jax.random.key(1), (2,) + bundle.latent_shape)
    # W + (alpha / r) A B folded once vs applied as two matmuls in every layer: rounding of each kernel's scale.
    assert_close(velocity(merged_bundle, merged, latents), velocity(bundle, params, latents), ulps=1024)


def test_adapter_export_of_a_run_without_adapters_is_refused(tmp_path, lora_run):
    base_dir = lora_run[0]
    proc = _run("stiv_jax.export", f"--workdir={base_dir}", f"--out={tmp_path / 'x'}", "--adapter")
    assert proc.returncode != 0 and "holds no LoRA adapters" in proc.stderr
