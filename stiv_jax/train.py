r"""Trains a STIV model from an ml-collections config; re-running on the same workdir resumes.

  python -m stiv_jax.train --config=experiments/demo.py --workdir=runs/demo [--config.total_steps=100]

Multi-process: start it through a launcher (``stiv_jax.launch``; TPU pods are auto-detected); ``main`` calls
``stiv_jax.launch.distributed.initialize`` before anything touches a backend. SIGTERM saves a checkpoint on every
host at the same step and exits 0 (the handler is installed before set-up, so also during restore and compile).

Resume takes the newest checkpoint that passes its integrity check (``stiv_jax.checkpointing.manager``); damaged
ones are named and moved aside. A save is left out when every update since the last one was skipped as
non-finite, so a diverging run keeps its checkpoints from before the divergence. A failure prints one line
(``stiv_jax.launch.cli``; ``STIV_TRACE=1`` for the trace) and exits 1.

Health (``config.health``, ``stiv_jax.training.health``): a hang watchdog ends the process with status 42 after
dumping every thread's stack when no step completes for ``hang_timeout_s`` (``startup_timeout_s`` before the
first step); a goodput line (time training vs. compiling, checkpointing, waiting for data) is printed with the
metrics every ``log_every`` steps and at the end; its figures go to ``metrics.jsonl`` as ``goodput/*`` and, for
the whole run of this process, to ``workdir/goodput.json``.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.data.pipeline import make_iterator
from stiv_jax.launch import distributed
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.parallel import rules as rules_lib
from stiv_jax.stages import transition
from stiv_jax.training import accelerators
from stiv_jax.training import compile_cache
from stiv_jax.training import finetune
from stiv_jax.training import flops as flops_lib
from stiv_jax.training import health
from stiv_jax.training import metrics as metrics_lib
from stiv_jax.training import prefetch
from stiv_jax.training import state as state_lib
from stiv_jax.model.bundle import build_model_bundle
from stiv_jax.training.optimizer import build_optimizer, learning_rate_schedule
from stiv_jax.training.preemption import PreemptionWatcher
from stiv_jax.training.step import make_train_step

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
flags.mark_flags_as_required(["config", "workdir"])


class NonFiniteLossError(FloatingPointError):
    """Raised after ``config.optim.max_nonfinite_steps`` consecutive NaN/Inf steps."""


def compile_train_step(config, bundle, tx, *, state, batch, frozen, shardings, mesh, rules):
    """Lowers and compiles the train step with explicit in/out shardings and a donated state.

    ``frozen``: the frozen encoder weights on the mesh (``state.place_frozen``), an argument of the step.

    Returns ``(compiled, activation_lines)``; the activation sharding lines are filled when
    ``config.mesh.debug_sharding`` is set.
    """
    batch_shardings, frozen_shardings = (jax.tree.map(lambda x: x.sharding, tree) for tree in (batch, frozen))
    jitted = jax.jit(make_train_step(config, bundle, tx), out_shardings=(shardings, None), donate_argnums=0,
                     in_shardings=(shardings, batch_shardings, frozen_shardings))
    with mesh_lib.activate(mesh, rules), mesh_lib.record_activation_shardings() as activation_lines:
        lowered = jitted.lower(state, batch, frozen)
    return lowered.compile(), list(activation_lines)


def start_health(config) -> tuple[health.HangWatchdog | None, health.GoodputTracker]:
    """The run's hang watchdog (None when ``config.health.hang_timeout_s`` is 0) and goodput tracker."""
    timeout_s = float(config.health.hang_timeout_s)
    startup_s = float(config.health.startup_timeout_s)
    watchdog = health.HangWatchdog(timeout_s, startup_timeout_s=startup_s).start() if timeout_s > 0 else None
    return watchdog, health.GoodputTracker()


def goodput_row(goodput: health.GoodputTracker) -> dict:
    """``goodput/*`` metrics: the train share of wall time and the seconds of every phase since the start."""
    summary = goodput.summary()
    row = {"goodput/fraction": summary["goodput"], "goodput/wall_s": summary["wall"]}
    row.update({f"goodput/{name}_s": summary[name] for name in health.PHASES + ("other",)})
    return row


def train(config, workdir: str) -> state_lib.TrainState:
    """Runs (or resumes) training to ``config.total_steps``; returns the final (or preempted) state."""
    watcher = PreemptionWatcher()   # first: a SIGTERM during set-up or the first compile still exits cleanly
    compile_cache.enable(config, workdir=workdir)   # a restart loads the compiled step instead of compiling
    watchdog, goodput = start_health(config)
    on_failure: list = []           # closers of what _train opened (an in-flight save completes before the error)
    try:
        return _train(config, workdir, watchdog=watchdog, goodput=goodput, watcher=watcher, on_failure=on_failure)
    except BaseException:
        for close in on_failure:
            close()
        raise
    finally:
        watcher.close()
        if watchdog is not None:
            watchdog.stop()


def check_learning_rate(config) -> None:
    """Refuses a schedule that gives a NaN, Inf or negative learning rate at any step up to ``total_steps``."""
    steps = np.unique(np.linspace(0, max(int(config.total_steps), 1), 4097).astype(np.int64))
    values = np.asarray(jax.vmap(learning_rate_schedule(config.optim))(steps))
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"config.optim.lr={config.optim.lr} with schedule={config.optim.schedule!r} gives learning "
                         f"rate {values[first]} at step {int(steps[first])}; it must be finite and >= 0")


def _train(config, workdir: str, *, watchdog, goodput, watcher, on_failure: list) -> state_lib.TrainState:
    pause = watchdog.paused if watchdog is not None else contextlib.nullcontext
    # ----------------------------------------------------------------- setup
    check_learning_rate(config)
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_lib.build_mesh(config.mesh)
    rules = mesh_lib.logical_rules(config.mesh)
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    is_lead = jax.process_index() == 0
    if is_lead:
        print(f"mesh {dict(mesh.shape)} over {mesh.size} devices, {jax.process_count()} process(es)")
    if config.sample_every:
        from stiv_jax.eval import validation
        validation.check_settings(config)  # a typo in config.eval.validation fails now, not at the first validation

    # ----------------------------------------------------------------- data
    data_iter = make_iterator(config.data, seed=config.seed, tokenize=bundle.tokenize,
                              process_index=jax.process_index(), process_count=jax.process_count())

    # ----------------------------------------------------------------- state: init or resume
    boxed_params_fn = lambda: bundle.init_boxed_params(jax.random.key(config.seed))  # noqa: E731
    trainable = finetune.trainable_patterns(config)   # config.finetune: partial fine-tuning / LoRA
    abstract, shardings = state_lib.state_shardings(boxed_params_fn, tx, mesh, rules, trainable=trainable)
    if is_lead:
        print(finetune.describe(abstract.params, trainable))
    fraction = rules_lib.check_parameter_sharding(abstract.params, shardings.params, mesh,
                                                  min_fraction=config.mesh.min_sharded_fraction)
    with goodput.phase("checkpoint"):   # the newest step that verifies; damaged ones are moved aside, said once
        state = ckpt.restore_newest_intact(workdir, abstract_state=abstract, shardings=shardings,
                                           data_iter=data_iter, log=print if is_lead else lambda _: None)
    manager = ckpt.make_manager(workdir, max_to_keep=config.keep_checkpoints,
                                keep_period=config.keep_checkpoint_period)
    on_failure.append(manager.close)
    if state is not None:
        if is_lead:
            print(f"resumed from step {int(state.step)} in {workdir}")
    else:
        state, shardings = state_lib.init_state(boxed_params_fn, tx, mesh, rules, trainable=trainable)
        # Stage transitions: weights from earlier stages' checkpoints (config.init), with a report.
        state = transition.initialize_from_sources(config, state)
    if is_lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=1)

    # ----------------------------------------------------------------- compiled step
    # Batches are read and put on the devices (with their shardings) by a background thread, ahead of the step;
    # checkpoints save the data position of the last batch the step took (prefetch.DevicePrefetcher).
    batches = prefetch.DevicePrefetcher(data_iter, lambda host: mesh_lib.host_to_global_batch(host, mesh, rules),
                                        depth=int(config.data.device_prefetch))

    # One executable per batch shape (data buckets give several); the first is compiled before the loop.
    compiled_steps: dict = {}

    frozen_by_kind: dict = {}   # frozen encoder weights on the mesh, by which of them a batch kind needs

    def frozen_for(batch):
        kind = ("latents" in batch, "text_embeddings" in batch)
        if kind not in frozen_by_kind:
            frozen_by_kind[kind], _ = state_lib.place_frozen(bundle.frozen_boxed_params(batch), mesh, rules)
        return frozen_by_kind[kind]

    def step_for(batch):
        key = tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))
        if key not in compiled_steps:
            start = time.perf_counter()
            compiled, activation_lines = compile_train_step(config, bundle, tx, state=state, batch=batch,
                                                            frozen=frozen_for(batch), shardings=shardings,
                                                            mesh=mesh, rules=rules)
            compiled_steps[key] = compiled
            if is_lead:
                sharded = f"; {fraction:.1%} of parameter bytes sharded over fsdp" if mesh.shape["fsdp"] > 1 else ""
                print(f"train step compiled for {dict(key)} in {time.perf_counter() - start:.1f}s{sharded}")
                if config.mesh.debug_sharding and len(compiled_steps) == 1:
                    boxed = jax.eval_shape(boxed_params_fn)
                    print("\n".join(rules_lib.describe_parameter_shardings(boxed, rules, mesh) + activation_lines))
        return compiled_steps[key]

    with goodput.phase("data"):
        batch, wait = next(batches)
    with goodput.phase("compile"):
        step_for(batch)
    step_flops_cache: dict = {}

    def step_flops(batch) -> float:
        """Analytic FLOPs of a step on this batch's bucket (its frames, size and global batch)."""
        shapes = {k: tuple(v.shape) for k, v in batch.items()}
        key = tuple(sorted(shapes.items()))
        if key not in step_flops_cache:
            latent = flops_lib.batch_latent_shape(shapes, latent_shape=bundle.latent_shape,
                                                  latent_factor=int(config.latent.factor))
            batch_size = shapes["latents" if "latents" in shapes else "video"][0]   # global arrays
            step_flops_cache[key] = flops_lib.train_step_flops(
                bundle.dit.config, latent_shape=latent, text_length=bundle.text_length, text_dim=config.text.dim,
                batch_size=batch_size)
        return step_flops_cache[key]

    peak = accelerators.peak_tflops_per_device(jax.devices()[0].device_kind,
                                               config.peak_tflops_per_device)

    # ----------------------------------------------------------------- loop
    writer = metrics_lib.MetricWriter(workdir)
    on_failure.append(writer.close)
    max_nonfinite = int(config.optim.max_nonfinite_steps)
    profile_start, profile_stop = tuple(config.profile_steps or (-1, -1))
    sample_every = int(config.sample_every or 0)
    first_step = int(state.step)
    last_saved = first_step if manager.latest_step() == first_step else None
    progress = tqdm(range(first_step, config.total_steps), initial=first_step, total=config.total_steps,
                    desc="train", disable=not is_lead)
    timer = metrics_lib.StepTimer()
    # The guard reads the non-finite streak nonfinite_check_lag steps late, so that many steps stay in flight.
    streaks = prefetch.LaggedReader(int(config.optim.nonfinite_check_lag))
    aborted_streak = 0
    with mesh_lib.activate(mesh, rules), contextlib.closing(batches):
        for step in progress:
            if step == profile_start:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
            if step > first_step:
                with goodput.phase("data"):
                    batch, wait = next(batches)
            with goodput.phase("train"):  # a new batch shape's compile is booked to "compile"
                state, metrics = step_for(batch)(state, batch, frozen_for(batch))
                streak = streaks.push(metrics["nonfinite_streak"])
            done = step + 1
            if watchdog is not None:
                watchdog.heartbeat(done)
            if streak is not None and streak >= max_nonfinite:
                aborted_streak = streak
                break
            timer.step_done(data_wait=wait, flops=step_flops(batch))
            if done == profile_stop:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
            if done % config.log_every == 0 or done == config.total_steps:
                with goodput.phase("train"):  # waits for the step's device work
                    device_metrics = jax.device_get(metrics)
                row = dict(device_metrics, **timer.summary(num_devices=mesh.size, peak_tflops=peak))
                row.update(goodput_row(goodput))
                writer.write(done, row)
                progress.set_postfix(loss=f"{row['loss']:.4f}", skipped=int(row["skipped_steps"]))
                if is_lead and config.console_metrics:
                    progress.write(metrics_lib.format_row(done, row))
                    progress.write(f"step {done}: {goodput.summary_line()}")
            preempted = watcher.should_stop(done)
            if preempted or done % config.checkpoint_every == 0 or done == config.total_steps:
                with goodput.phase("checkpoint"):
                    if all_skipped_since(state, last_saved, first_step, done):
                        if is_lead:   # the same weights as the last save: rotating good steps away gains nothing
                            progress.write(f"step {done}: not saved, every update since step "
                                           f"{last_saved if last_saved is not None else first_step} was skipped "
                                           f"(non-finite)")
                    else:
                        ckpt.save(manager, done, state=state, data_iter=batches, config=config)
                        last_saved = done
            if preempted:
                if is_lead:
                    newest = f"step {last_saved}" if last_saved is not None else "none"
                    print(f"preempted: saved step {done}, exiting" if last_saved == done else
                          f"preempted: exiting; the newest checkpoint is {newest} (the steps since were skipped)")
                break
            if sample_every and done % sample_every == 0:  # after the save: a failing validation loses no steps
                from stiv_jax.eval import validation
                with goodput.phase("eval"), pause():
                    validation.run_validation(config=config, workdir=workdir, step=done, params=state.ema_params,
                                              bundle=bundle, mesh=mesh, rules=rules, writer=writer)
    with goodput.phase("checkpoint"), pause():  # the last asynchronous save may take long on a big state
        manager.wait_until_finished()
    manager.close()
    if is_lead:
        print(f"{goodput.summary_line()} (whole run)", flush=True)
        with open(os.path.join(workdir, "goodput.json"), "w") as f:
            json.dump(dict(goodput.summary(), steps=[first_step, int(state.step)]), f, indent=1)
    writer.close()
    on_failure.clear()   # closed already
    if aborted_streak:
        raise NonFiniteLossError(
            f"{aborted_streak} consecutive steps had a NaN/Inf loss, gradient or update (updates skipped; last "
            f"checkpoint: "
            f"step {last_saved}). Lower config.optim.lr, check the data, or raise config.optim.max_nonfinite_steps")
    if is_lead and os.path.exists(writer.path):
        metrics_lib.plot_loss(writer.path, os.path.join(workdir, "loss.png"))
    return state


def all_skipped_since(state, last_saved: int | None, first_step: int, done: int) -> bool:
    """True when every step after the last save (or the start) skipped its update (reads one device scalar)."""
    since = last_saved if last_saved is not None else first_step
    return done > since and int(state.nonfinite_streak) >= done - since


def main(argv):
    del argv
    distributed.initialize()  # multi-process launches only; before anything touches a jax backend
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and grain log every file at INFO
    train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    from stiv_jax.launch import cli
    cli.run(main)
