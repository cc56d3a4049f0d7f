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
    config.diffusion.predict_frames = 2        # the demo's 4 given frames would be the whole 4-frame clip
    config.data.resolution = 16
    config.data.batch_size = 8
    config.data.num_threads = 1
    config.data.prefetch = 1
    config.optim.warmup_steps = 2
    config.optim.lr = 2e-3
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
    """``(state, step_fn, mesh, rules, bundle, tx, shardings, activation_lines)`` for ``config`` on ``devices``."""
    from stiv_jax.training import state as state_lib
    from stiv_jax.model.bundle import build_model_bundle
    from stiv_jax.training.optimizer import build_optimizer
    from stiv_jax.training.compiled import compile_train_step
    from stiv_jax.parallel import mesh as mesh_lib
    mesh, rules = mesh_for(config, devices)
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    from stiv_jax.training import finetune
    state, shardings = state_lib.init_state(lambda: bundle.init_boxed_params(jax.random.key(config.seed)), tx,
                                            mesh, rules, trainable=finetune.trainable_patterns(config))
    batch = mesh_lib.host_to_global_batch(synthetic_batch(config), mesh, rules)
    frozen, _ = state_lib.place_frozen(bundle.frozen_boxed_params(batch), mesh, rules)
    compiled, activation_lines = compile_train_step(config, bundle, tx, state=state, batch=batch, frozen=frozen,
                                                    shardings=shardings, mesh=mesh, rules=rules)
    step_fn = lambda state, batch: compiled(state, batch, frozen)  # noqa: E731
    return state, step_fn, mesh, rules, bundle, tx, shardings, activation_lines


def run_steps(config, num_steps: int, devices=None):
    """``(state, metrics, activation_sharding_lines)`` after ``num_steps`` synthetic steps, state on the host."""
    from stiv_jax.parallel import mesh as mesh_lib
    state, step_fn, mesh, rules, *_, activation_lines = build_run(config, devices)
    with mesh_lib.activate(mesh, rules):
        for i in range(num_steps):
            state, metrics = step_fn(state, mesh_lib.host_to_global_batch(synthetic_batch(config, i), mesh, rules))
    return jax.device_get(state), jax.device_get(metrics), activation_lines


def assert_trees_equal(a, b, what=""):
    paths = jax.tree_util.tree_flatten_with_path(a)[0]
    for (path, x), y in zip(paths, jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=f"{what}{jax.tree_util.keystr(path)}")




DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_driver.py")


def config_to_json(config, path: str) -> str:
    import json
    with open(path, "w") as f:
        json.dump(config.to_dict(), f)
    return path


def config_from_json(path: str):
    """The config as the child processes see it (JSON turns tuples into lists; every run must use the same)."""
    import json
    import ml_collections
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def synthetic_iterator_factory(config):
    """A ``make_iterator`` replacement: process ``p`` of ``n`` yields rows ``[p*B/n, (p+1)*B/n)`` of global batch
    ``k`` at step ``k``, so any process count sees the same global batches. Checkpointable (grain)."""
    import grain

    def make_iterator(data_config, *, seed, tokenize, process_index=0, process_count=1):
        del data_config, seed, tokenize
        rows = config.data.batch_size // process_count
        lo = process_index * rows

        def host_rows(k):
            return {key: v[lo:lo + rows] for key, v in synthetic_batch(config, int(k)).items()}
        return iter(grain.MapDataset.range(10**6).map(host_rows))
    return make_iterator


def dump_params(params, path: str) -> None:
    """Gathers (possibly multi-process) parameters; process 0 writes them to ``path`` (.npz, flat keys)."""
    from jax.experimental import multihost_utils
    gathered = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(gathered)[0]}
        np.savez(path, **flat)


def child_env(**extra) -> dict:
    """Environment for a child training process: CPU, 8 fake devices unless overridden, repo importable."""
    repo = os.path.dirname(TESTS_DIR)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=os.pathsep.join([repo, TESTS_DIR, os.environ.get("PYTHONPATH", "")]))
    env.update(extra)
    return env
