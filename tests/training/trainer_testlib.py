"""Shared helpers of the trainer tests: a tiny config, synthetic batches, and a sharded state + compiled step."""
import os
import sys

import jax
import numpy as np

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from conftest import demo_config  # noqa: E402


def tiny_config(shards: str = "unused", **overrides):
    """The demo config shrunk to a 1-block, 32-wide DiT on 4 frames of 16x16 pixels (4 tokens per frame)."""
    config = demo_config(shards)
    config.model.depth = 1
    config.model.width = 32
    config.model.num_heads = 4
    config.text.kind = "token_embedding"      # trainable byte encoder: no checkpoint to load
    config.text.dim = 32
    config.text.max_length = 16
    config.data.frames = 4
    config.data.resolution = 16
    config.data.batch_size = 8
    config.data.num_threads = 1
    config.data.prefetch = 1
    config.optim.warmup_steps = 2
    config.optim.lr = 1e-2
    config.optim.min_dim_size_to_factor = 16   # small enough that AdaFactor factors the tiny kernels
    config.optim.block_rms_clip = None
    config.console_metrics = False
    config.log_every = 1
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return config


def synthetic_batch(config, step: int = 0) -> dict:
    """A deterministic host batch shaped like the pipeline's: uint8 video, byte tokens and mask."""
    rng = np.random.default_rng(1000 + step)
    b, f, r = config.data.batch_size, config.data.frames, config.data.resolution
    length = config.text.max_length
    ids = rng.integers(1, 200, (b, length)).astype(np.int32)
    mask = np.arange(length)[None, :] < rng.integers(3, length, (b, 1))
    return {"video": rng.integers(0, 256, (b, f, r, r, 3)).astype(np.uint8), "text_ids": ids * mask,
            "text_mask": mask}


def mesh_for(config, devices=None):
    from stiv_jax.parallel import mesh as mesh_lib
    return mesh_lib.build_mesh(config.mesh, devices), mesh_lib.logical_rules(config.mesh)


def build_run(config, devices=None):
    """``(state, step_fn, mesh, rules, bundle, tx, shardings)`` for ``config`` on ``devices``."""
    from stiv_jax.training import state as state_lib
    from stiv_jax.training.model_bundle import build_model_bundle
    from stiv_jax.training.optimizer import build_optimizer
    from stiv_jax.train import compile_train_step
    from stiv_jax.parallel import mesh as mesh_lib
    mesh, rules = mesh_for(config, devices)
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    state, shardings = state_lib.init_state(lambda: bundle.init_boxed_params(jax.random.key(config.seed)), tx,
                                            mesh, rules)
    batch = mesh_lib.host_to_global_batch(synthetic_batch(config), mesh, rules)
    step_fn, _ = compile_train_step(config, bundle, tx, state=state, batch=batch, shardings=shardings,
                                    mesh=mesh, rules=rules)
    return state, step_fn, mesh, rules, bundle, tx, shardings


def run_steps(config, num_steps: int, devices=None):
    """The state after ``num_steps`` steps on the synthetic batches, gathered to host numpy."""
    from stiv_jax.parallel import mesh as mesh_lib
    state, step_fn, mesh, rules, *_ = build_run(config, devices)
    with mesh_lib.activate(mesh, rules):
        for i in range(num_steps):
            state, metrics = step_fn(state, mesh_lib.host_to_global_batch(synthetic_batch(config, i), mesh, rules))
    return jax.device_get(state), jax.device_get(metrics)


def assert_trees_close(a, b, rtol, atol, what=""):
    paths = jax.tree_util.tree_flatten_with_path(a)[0]
    for (path, x), y in zip(paths, jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


def assert_trees_equal(a, b, what=""):
    paths = jax.tree_util.tree_flatten_with_path(a)[0]
    for (path, x), y in zip(paths, jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}{jax.tree_util.keystr(path)}")


