"""Async orbax ``CheckpointManager`` with items ``state`` (sharded, EMA inside), ``data_iter`` (grain) and
``config`` (JSON); keep-last-N plus periodic keeps; restore onto any mesh; parameters-only loading.

Crash safety: orbax writes each step into a ``<step>.orbax-checkpoint-tmp-*`` directory and renames it to
``<step>`` only after every item (and every host) finished, so a crash during a save leaves the previous complete
checkpoint as the latest one; the half-written temporary directory is ignored and cleaned up on the next start.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data_iter", "config")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, max_to_keep: int = 3, keep_period: int | None = None,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """The run's checkpoint manager under ``workdir/checkpoints``.

    Args:
      max_to_keep: newest checkpoints kept (``config.keep_checkpoints``).
      keep_period: additionally keep every checkpoint whose step is a multiple of this
        (``config.keep_checkpoint_period``; None or 0 keeps none beyond the newest).
      async_save: write in a background thread while training continues.
    """
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period or None,
                                           enable_async_checkpointing=async_save, create=True,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, *, state, data_iter=None, config=None) -> None:
    """Starts an asynchronous save of ``step`` (the caller decides when a save is due)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
        items["config"] = ocp.args.JsonSave(config.to_dict())
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def abstract_with_shardings(abstract_tree, shardings):
    """``ShapeDtypeStruct``s carrying the target shardings: restoring into them reshards onto any mesh."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def restore(manager: ocp.CheckpointManager, *, abstract_state, shardings, data_iter=None, step: int | None = None):
    """Restores the latest (or ``step``) state onto ``shardings``, and the data iterator in place if given.

    The target shardings may belong to a different mesh or device count than the run that saved.
    """
    step = manager.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_with_shardings(abstract_state, shardings))}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as err:
        raise ValueError(f"checkpoint step {step} under {manager.directory} does not match this run's state "
                         f"structure (changed model or optimizer config?): {err}") from err
    return restored["state"]


def restore_config(workdir: str, step: int | None = None) -> dict:
    """The config JSON stored with a checkpoint of the run in ``workdir``."""
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=ITEMS)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def _state_item_dir(workdir_or_path: str, step: int | None) -> tuple[str, int]:
    """Resolves a run directory, its ``checkpoints`` directory, or one step directory to ``<step>/state``."""
    path = os.path.abspath(workdir_or_path)
    if os.path.isdir(os.path.join(path, "state")):          # a step directory
        return os.path.join(path, "state"), int(os.path.basename(path))
    root = path if os.path.basename(path) == "checkpoints" else checkpoint_dir(path)
    steps = sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []
    if not steps:
        raise FileNotFoundError(f"no complete checkpoint under {root}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"checkpoint step {step} not under {root}; available: {steps}")
    return os.path.join(root, str(step), "state"), step


def load_params_from_checkpoint(workdir_or_path: str, step: int | None = None, use_ema: bool = True, *,
                                target: Any = None) -> Any:
    """Loads only the parameters (EMA or raw) of another run's checkpoint; the optimizer state is never read.

    Args:
      workdir_or_path: a run directory, its ``checkpoints/`` directory, or one ``checkpoints/<step>`` directory.
      step: the step to load (latest complete one if None).
      use_ema: load ``ema_params`` (the paper initialises each stage from EMA weights) instead of ``params``.
      target: optional tree of ``jax.ShapeDtypeStruct`` with ``sharding`` (e.g. from
        ``state_shardings(...)[0].params`` + ``abstract_with_shardings``) to restore directly onto a mesh;
        it may cover a subset of the saved parameters. Without it, the full tree comes back as numpy on the host.

    Returns:
      The ``{'dit': ..., 'text': ...}`` parameter tree.
    """
    item_dir, step = _state_item_dir(workdir_or_path, step)
    key = "ema_params" if use_ema else "params"
    checkpointer = ocp.PyTreeCheckpointer()
    if target is None:
        metadata = checkpointer.metadata(item_dir).item_metadata.tree
        if key not in metadata:
            raise KeyError(f"{item_dir} holds no {key!r}; saved entries: {sorted(metadata)}")
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata[key])
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    else:
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(
        item={key: target}, restore_args={key: restore_args}, partial_restore=True))
    return restored[key]
