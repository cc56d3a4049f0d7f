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
import dataclasses
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.data.pipeline import make_iterator
from stiv_jax.eval import validation
from stiv_jax.launch import distributed
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.parallel import rules as rules_lib
from stiv_jax.stages import transition
from stiv_jax.training import accelerators
from stiv_jax.training import compile_cache
from stiv_jax.training import compiled as compiled_lib
from stiv_jax.training import finetune
from stiv_jax.training import health
from stiv_jax.training import metrics as metrics_lib
from stiv_jax.training import prefetch
from stiv_jax.training import schedule as schedule_lib
from stiv_jax.training import state as state_lib
from stiv_jax.model.bundle import build_model_bundle
from stiv_jax.training.optimizer import build_optimizer, learning_rate_schedule
from stiv_jax.training.preemption import PreemptionWatcher

config_flags.DEFINE_config_file("config", None, "Experiment config file (experiments/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, samples.")
flags.mark_flags_as_required(["config", "workdir"])


class NonFiniteLossError(FloatingPointError):
    """Raised after ``config.optim.max_nonfinite_steps`` consecutive NaN/Inf steps."""


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
    try:
        # What set-up opens (checkpoint manager, device prefetcher, metric writer, validator) is closed on the way
        # out, also on an error (an in-flight save then completes before the error propagates).
        with contextlib.ExitStack() as closers:
            run = _set_up(config, workdir, goodput=goodput, closers=closers)
            return _finish(run, _loop(run, watchdog=watchdog, goodput=goodput, watcher=watcher),
                           watchdog=watchdog, goodput=goodput, closers=closers)
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


@dataclasses.dataclass
class _Run:
    """What set-up hands the loop: the mesh, the model, the state to train and what reads, steps and writes."""

    config: Any
    workdir: str
    mesh: jax.sharding.Mesh
    rules: Any
    state: state_lib.TrainState
    steps: compiled_lib.StepCache            # the compiled step per batch shape
    batches: prefetch.DevicePrefetcher       # global batches on the mesh, read ahead of the step
    manager: Any                             # orbax CheckpointManager of workdir/checkpoints
    writer: metrics_lib.MetricWriter
    schedule: schedule_lib.Schedule
    is_lead: bool                            # process 0: prints and writes run files
    make_validator: Callable[[], Any]        # builds the run's eval.validation.Validator (held-out clips loaded)
    _validator: Any = None

    def validate(self, done: int) -> None:
        """Validates the EMA weights at step ``done``; the validator is built at the first validation (a run that
        stops before it reads no held-out clips) and closed with the run."""
        if self._validator is None:
            self._validator = self.make_validator()
        self._validator.run(done, self.state.ema_params)

    def close_validator(self) -> None:
        if self._validator is not None:
            self._validator.close()


def _set_up(config, workdir: str, *, goodput, closers: contextlib.ExitStack) -> _Run:
    """Mesh, model bundle, data, restored (or initialised) state, the step cache (compiled by the loop), writers."""
    check_learning_rate(config)
    os.makedirs(workdir, exist_ok=True)
    mesh, rules = mesh_lib.build_mesh(config.mesh), mesh_lib.logical_rules(config.mesh)
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    is_lead = jax.process_index() == 0
    log = print if is_lead else lambda _: None
    log(f"mesh {dict(mesh.shape)} over {mesh.size} devices, {jax.process_count()} process(es)")
    schedule = schedule_lib.Schedule.from_config(config)
    if schedule.validate_every:
        validation.check_settings(config)  # a typo in config.eval.validation fails now, not at the first validation
    data_iter = make_iterator(config.data, seed=config.seed, tokenize=bundle.tokenize,
                              process_index=jax.process_index(), process_count=jax.process_count())
    state, shardings, fraction = _restore_or_init(config, workdir, bundle, tx, mesh=mesh, rules=rules,
                                                  data_iter=data_iter, goodput=goodput, log=log)
    manager = ckpt.make_manager(workdir, max_to_keep=config.keep_checkpoints,
                                keep_period=config.keep_checkpoint_period)
    closers.callback(manager.close)
    if is_lead:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=1)
    # Batches are read and put on the devices (with their shardings) by a background thread, ahead of the step;
    # checkpoints save the data position of the last batch the step took (prefetch.DevicePrefetcher).
    batches = prefetch.DevicePrefetcher(data_iter, lambda host: mesh_lib.host_to_global_batch(host, mesh, rules),
                                        depth=int(config.data.device_prefetch))
    closers.callback(batches.close)

    def on_compile(key, seconds: float, activation_lines: list, count: int) -> None:
        sharded = f"; {fraction:.1%} of parameter bytes sharded over fsdp" if mesh.shape["fsdp"] > 1 else ""
        log(f"train step compiled for {dict(key)} in {seconds:.1f}s{sharded}")
        if config.mesh.debug_sharding and count == 1:
            boxed = jax.eval_shape(lambda: bundle.init_boxed_params(jax.random.key(config.seed)))
            log("\n".join(rules_lib.describe_parameter_shardings(boxed, rules, mesh) + activation_lines))

    steps = compiled_lib.StepCache(config, bundle, tx, shardings=shardings, mesh=mesh, rules=rules,
                                   on_compile=on_compile)
    writer = metrics_lib.MetricWriter(workdir)
    closers.callback(writer.close)
    run = _Run(config=config, workdir=workdir, mesh=mesh, rules=rules, state=state, steps=steps, batches=batches,
               manager=manager, writer=writer, schedule=schedule, is_lead=is_lead,
               make_validator=lambda: validation.for_run(config, workdir, bundle, mesh=mesh, rules=rules,
                                                         writer=writer))
    closers.callback(run.close_validator)
    return run


def _restore_or_init(config, workdir: str, bundle, tx, *, mesh, rules, data_iter, goodput, log):
    """``(state, shardings, fraction)``: the newest checkpoint of ``workdir`` that verifies (damaged ones
    moved aside, said once), else a fresh state with the stage transition's weights (``config.init``); ``fraction``:
    the share of parameter bytes sharded over ``fsdp``, checked against ``config.mesh.min_sharded_fraction`` first."""
    boxed_params_fn = lambda: bundle.init_boxed_params(jax.random.key(config.seed))  # noqa: E731
    trainable = finetune.trainable_patterns(config)   # config.finetune: partial fine-tuning / LoRA
    abstract, shardings = state_lib.state_shardings(boxed_params_fn, tx, mesh, rules, trainable=trainable)
    log(finetune.describe(abstract.params, trainable))
    fraction = rules_lib.check_parameter_sharding(abstract.params, shardings.params, mesh,
                                                  min_fraction=config.mesh.min_sharded_fraction)
    with goodput.phase("checkpoint"):
        state = ckpt.restore_newest_intact(workdir, abstract_state=abstract, shardings=shardings,
                                           data_iter=data_iter, log=log)
    if state is not None:
        log(f"resumed from step {int(state.step)} in {workdir}")
        return state, shardings, fraction
    state, shardings = state_lib.init_state(boxed_params_fn, tx, mesh, rules, trainable=trainable)
    return transition.initialize_from_sources(config, state), shardings, fraction


@dataclasses.dataclass
class _Outcome:
    first_step: int
    last_saved: int | None          # the newest step saved (None: none since the start of this process)
    aborted_streak: int = 0         # the non-finite streak that stopped the run (0: it did not)


def _loop(run: _Run, *, watchdog, goodput, watcher) -> _Outcome:
    """Steps from the state's step to ``config.total_steps`` (or a preemption, or a non-finite streak)."""
    config, schedule = run.config, run.schedule
    with goodput.phase("data"):
        batch, wait = next(run.batches)
    with goodput.phase("compile"):   # the first bucket's step, before the loop
        run.steps.executable(run.state, batch)
    peak = accelerators.peak_tflops_per_device(jax.devices()[0].device_kind, config.peak_tflops_per_device)
    first_step = int(run.state.step)
    outcome = _Outcome(first_step, first_step if run.manager.latest_step() == first_step else None)
    progress = tqdm(range(first_step, config.total_steps), initial=first_step, total=config.total_steps,
                    desc="train", disable=not run.is_lead)
    timer = metrics_lib.StepTimer()
    # The guard reads the non-finite streak nonfinite_check_lag steps late, so that many steps stay in flight.
    streaks = prefetch.LaggedReader(int(config.optim.nonfinite_check_lag))
    with mesh_lib.activate(run.mesh, run.rules):
        for step in progress:
            if schedule.profile_starts(step):
                jax.profiler.start_trace(os.path.join(run.workdir, "profile"))
            if step > first_step:
                with goodput.phase("data"):
                    batch, wait = next(run.batches)
            with goodput.phase("train"):  # a new batch shape's compile is booked to "compile"
                run.state, metrics = run.steps(run.state, batch)
                streak = streaks.push(metrics["nonfinite_streak"])
            done = step + 1
            if watchdog is not None:
                watchdog.heartbeat(done)
            if streak is not None and streak >= int(config.optim.max_nonfinite_steps):
                outcome.aborted_streak = streak
                break
            timer.step_done(data_wait=wait, flops=run.steps.flops(batch))
            if schedule.profile_stops(done):
                jax.block_until_ready(run.state)
                jax.profiler.stop_trace()
            if schedule.log(done):
                _log(run, done, metrics, timer=timer, goodput=goodput, progress=progress, peak=peak)
            preempted = watcher.should_stop(done)
            if schedule.checkpoint(done, preempted=preempted):
                with goodput.phase("checkpoint"):
                    _save(run, done, outcome, progress=progress)
            if preempted:
                newest = f"step {outcome.last_saved}" if outcome.last_saved is not None else "none"
                _say(run, f"preempted: saved step {done}, exiting" if outcome.last_saved == done else
                     f"preempted: exiting; the newest checkpoint is {newest} (the steps since were skipped)")
                break
            if schedule.validate(done):   # after the save: a failing validation loses no steps
                with goodput.phase("eval"), _paused(watchdog):
                    run.validate(done)
    return outcome


def _paused(watchdog):
    """The hang watchdog paused for a long step of known length (validation, the last save); a no-op without one."""
    return watchdog.paused() if watchdog is not None else contextlib.nullcontext()


def _say(run: _Run, line: str) -> None:
    if run.is_lead:
        print(line)


def _log(run: _Run, done: int, metrics, *, timer, goodput, progress, peak) -> None:
    """One metrics row (device metrics, step time / MFU, goodput) to metrics.jsonl and TensorBoard."""
    with goodput.phase("train"):  # waits for the step's device work
        device_metrics = jax.device_get(metrics)
    row = dict(device_metrics, **timer.summary(num_devices=run.mesh.size, peak_tflops=peak))
    row.update(goodput_row(goodput))
    run.writer.write(done, row)
    progress.set_postfix(loss=f"{row['loss']:.4f}", skipped=int(row["skipped_steps"]))
    if run.is_lead and run.config.console_metrics:
        progress.write(metrics_lib.format_row(done, row))
        progress.write(f"step {done}: {goodput.summary_line()}")


def _save(run: _Run, done: int, outcome: _Outcome, *, progress) -> None:
    """Saves step ``done``, unless every update since the last save was skipped (the same weights: rotating good
    steps away would gain nothing)."""
    if all_skipped_since(run.state, outcome.last_saved, outcome.first_step, done):
        since = outcome.last_saved if outcome.last_saved is not None else outcome.first_step
        if run.is_lead:
            progress.write(f"step {done}: not saved, every update since step {since} was skipped (non-finite)")
        return
    ckpt.save(run.manager, done, state=run.state, data_iter=run.batches, config=run.config)
    outcome.last_saved = done


def _finish(run: _Run, outcome: _Outcome, *, watchdog, goodput, closers) -> state_lib.TrainState:
    """Waits for the last save, closes the run's files, writes goodput.json and loss.png; raises
    :class:`NonFiniteLossError` when a non-finite streak stopped the run."""
    with goodput.phase("checkpoint"), _paused(watchdog):  # the last asynchronous save may take long on a big state
        run.manager.wait_until_finished()
    closers.close()   # manager, prefetcher, metric writer, validator
    if run.is_lead:
        print(f"{goodput.summary_line()} (whole run)", flush=True)
        with open(os.path.join(run.workdir, "goodput.json"), "w") as f:
            json.dump(dict(goodput.summary(), steps=[outcome.first_step, int(run.state.step)]), f, indent=1)
    if outcome.aborted_streak:
        raise NonFiniteLossError(
            f"{outcome.aborted_streak} consecutive steps had a NaN/Inf loss, gradient or update (updates skipped; "
            f"last checkpoint: step {outcome.last_saved}). Lower config.optim.lr, check the data, or raise "
            f"config.optim.max_nonfinite_steps")
    if run.is_lead and os.path.exists(run.writer.path):
        metrics_lib.plot_loss(run.writer.path, os.path.join(run.workdir, "loss.png"))
    return run.state


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
