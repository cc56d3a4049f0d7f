"""Async orbax ``CheckpointManager`` with items ``state`` (sharded), ``data_iter`` (grain) and ``config`` (JSON).

Orbax writes each step to a temporary directory and renames it when complete, so a crash during a save never
damages the last complete checkpoint.
"""
from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, max_to_keep: int = 3, async_save: bool = True) -> ocp.CheckpointManager:
    """The run's checkpoint manager under ``workdir/checkpoints``."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                           enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                                 item_names=("state", "data_iter", "config"))


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
    """Restores the latest (or ``step``) state onto ``shardings``, and the data iterator in place if given."""
    step = manager.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_with_shardings(abstract_state, shardings))}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]


def restore_config(workdir: str, step: int | None = None) -> dict:
    """The config JSON stored with a checkpoint of the run in ``workdir``."""
    manager = ocp.CheckpointManager(checkpoint_dir(workdir), item_names=("state", "data_iter", "config"))
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
