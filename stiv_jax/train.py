r"""Trains a STIV model from an ml-collections config; re-running on the same workdir resumes.

  python -m stiv_jax.train --config=experiments/demo.py --workdir=runs/demo [--config.total_steps=100]
"""
from __future__ import annotations

import json
import os
import time

import jax
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.data.pipeline import make_iterator
from stiv_jax.launch import distributed
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.training import metrics as metrics_lib
from stiv_jax.training import state as state_lib
from stiv_jax.training.model_bundle import build_model_bundle
from stiv_jax.training.optimizer import build_optimizer
from stiv_jax.training.step import make_train_step

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
flags.mark_flags_as_required(["config", "workdir"])


def train(config, workdir: str) -> state_lib.TrainState:
    """Runs (or resumes) training to ``config.total_steps``; returns the final state."""
    # ----------------------------------------------------------------- setup
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_lib.build_mesh(config.mesh)
    rules = mesh_lib.logical_rules(config.mesh)
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    if jax.process_index() == 0:
        print(f"mesh {dict(mesh.shape)} over {mesh.size} devices, {jax.process_count()} process(es)")

    # ----------------------------------------------------------------- data
    data_iter = make_iterator(config.data, seed=config.seed, tokenize=bundle.tokenize,
                              process_index=jax.process_index(), process_count=jax.process_count())

    # ----------------------------------------------------------------- state: init or resume
    boxed_params_fn = lambda: bundle.init_boxed_params(jax.random.key(config.seed))  # noqa: E731
    manager = ckpt.make_manager(workdir, max_to_keep=config.keep_checkpoints)
    if manager.latest_step() is not None:
        abstract, shardings = state_lib.state_shardings(boxed_params_fn, tx, mesh, rules)
        state = ckpt.restore(manager, abstract_state=abstract, shardings=shardings, data_iter=data_iter)
        print(f"resumed from step {int(state.step)} in {workdir}")
    else:
        state, shardings = state_lib.init_state(boxed_params_fn, tx, mesh, rules)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=1)

    # ----------------------------------------------------------------- compiled step
    train_step = jax.jit(make_train_step(config, bundle, tx), in_shardings=(shardings, None),
                         out_shardings=(shardings, None), donate_argnums=0)

    # ----------------------------------------------------------------- loop
    writer = metrics_lib.MetricWriter(workdir)
    first_step = int(state.step)
    progress = tqdm(range(first_step, config.total_steps), initial=first_step, total=config.total_steps,
                    desc="train", disable=jax.process_index() != 0)
    last_log = time.perf_counter()
    with mesh_lib.activate(mesh, rules):
        for step in progress:
            batch = mesh_lib.host_to_global_batch(next(data_iter), mesh, rules)
            state, metrics = train_step(state, batch)
            done = step + 1
            if done % config.log_every == 0 or done == config.total_steps:
                now = time.perf_counter()
                metrics = dict(jax.device_get(metrics), steps_per_sec=config.log_every / (now - last_log))
                last_log = now
                writer.write(done, metrics)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
            if done % config.checkpoint_every == 0 or done == config.total_steps:
                ckpt.save(manager, done, state=state, data_iter=data_iter, config=config)
    manager.wait_until_finished()
    manager.close()
    writer.close()
    if jax.process_index() == 0 and os.path.exists(writer.path):
        metrics_lib.plot_loss(writer.path, os.path.join(workdir, "loss.png"))
    return state


def main(argv):
    del argv
    distributed.initialize()  # multi-process launches only; before anything touches a jax backend
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and grain log every file at INFO
    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
