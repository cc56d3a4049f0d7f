"""Async orbax ``CheckpointManager`` with items ``state`` (sharded, EMA inside), ``data_iter`` (grain) and
``config`` (JSON); keep-last-N plus periodic keeps; restore onto any mesh; parameters-only loading.

Crash safety: orbax writes each step into a ``<step>.orbax-checkpoint-tmp-*`` directory and renames it to
``<step>`` only after every item (and every host) finished, so a crash during a save leaves the previous complete
checkpoint as the latest one; the half-written temporary directory is ignored and cleaned up on the next start.

Integrity (``integrity.py``): every step carries a SHA-256 manifest of its files, written before the commit.
``restore_newest_intact`` walks the steps from the newest, skips (and, for training, moves aside to
``<step>.damaged``) every step whose files fail the manifest, fail to restore, or hold non-finite parameters,
says so in one line, and restores the newest step that passes. A step whose parameters do not match this run's
model is not damaged: that is an error naming the parameters (``CheckpointMismatchError``).
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from stiv_jax.checkpointing import exports
from stiv_jax.checkpointing import integrity

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
    pending: dict = {"step": None}    # the step being saved, for the manifest callback
    directory = checkpoint_dir(workdir)

    def write_manifest():   # orbax's background thread, after every item is written, before the commit
        if jax.process_index() == 0:
            integrity.write_manifest_for_pending(directory, pending["step"])

    async_options = ocp.AsyncOptions(post_finalization_callback=write_manifest) if async_save else None
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, keep_period=keep_period or None,
                                           enable_async_checkpointing=async_save, create=True,
                                           cleanup_tmp_directories=True, async_options=async_options)
    manager = ocp.CheckpointManager(directory, options=options, item_names=ITEMS)
    pending.update(asynchronous=async_save, directory=directory)
    manager.stiv_pending = pending
    return manager


def save(manager: ocp.CheckpointManager, step: int, *, state, data_iter=None, config=None) -> None:
    """Starts an asynchronous save of ``step`` (the caller decides when a save is due)."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    if config is not None:
        items["config"] = ocp.args.JsonSave(config.to_dict())
    manager.wait_until_finished()   # one save in flight: the manifest callback knows which step it belongs to
    manager.stiv_pending["step"] = step
    manager.save(step, args=ocp.args.Composite(**items), force=True)
    if not manager.stiv_pending["asynchronous"] and jax.process_index() == 0:   # committed already: hash it now
        integrity.write_manifest(os.path.join(manager.stiv_pending["directory"], str(step)))


def abstract_with_shardings(abstract_tree, shardings):
    """``ShapeDtypeStruct``s carrying the target shardings: restoring into them reshards onto any mesh."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


class CheckpointDamagedError(ValueError):
    """A step's files are missing, truncated or changed, or it restores non-finite parameters."""


class CheckpointMismatchError(ValueError):
    """A step saved by another model or optimizer config than this run's (the parameters are named)."""


def complete_steps(workdir: str) -> list[int]:
    """Committed steps under ``workdir/checkpoints`` (ascending); moved-aside ``<step>.damaged`` ones excluded."""
    root = checkpoint_dir(workdir)
    return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def path_str(key_path) -> str:
    """A jax key path as ``'params/dit/block_0/...'`` (dict keys, attribute names and indices alike)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)


def _flat_shapes(tree) -> dict[str, tuple]:
    return {path_str(k): (tuple(v.shape), str(v.dtype)) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def describe_mismatch(saved_tree, abstract_state) -> str | None:
    """How the saved state tree (orbax metadata) differs from ``abstract_state``, naming parameters; None if not.

    Parameters are compared by path and shape; the optimizer state (whose containers orbax names by index) by the
    multiset of its leaves' shapes.
    """
    saved = _flat_shapes(saved_tree)
    wanted = _flat_shapes(abstract_state.replace(opt_state=None) if hasattr(abstract_state, "replace")
                          else abstract_state)
    problems = []
    for group in ("params", "ema_params"):
        have = {p: v for p, v in saved.items() if p.startswith(group + "/")}
        need = {p: v for p, v in wanted.items() if p.startswith(group + "/")}
        missing, extra = sorted(set(need) - set(have)), sorted(set(have) - set(need))
        differ = [f"{p} saved {have[p][0]} vs {need[p][0]}" for p in sorted(set(need) & set(have))
                  if have[p][0] != need[p][0]]
        for what, names in (("missing", missing), ("not in this model", extra), ("shape differs", differ)):
            if names:
                more = " ..." if len(names) > 4 else ""
                problems.append(f"{len(names)} {group} {what}: {', '.join(names[:4])}{more}")
        if problems:
            break   # ema_params repeats the same differences
    if hasattr(abstract_state, "opt_state"):
        saved_opt = sorted(v[0] for p, v in saved.items() if p.startswith("opt_state/"))
        need_opt = sorted(tuple(x.shape) for x in jax.tree.leaves(abstract_state.opt_state))
        if saved_opt != need_opt and not problems:
            problems.append(f"the optimizer state differs ({len(saved_opt)} saved leaves vs {len(need_opt)}; "
                            f"changed config.optim?)")
    return "; ".join(problems) or None


def nonfinite_leaves(tree, prefix: str = "") -> list[str]:
    """Paths of the floating-point leaves of ``tree`` holding a NaN or Inf."""
    bad = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact) and not bool(jax.numpy.isfinite(leaf).all()):
            bad.append(prefix + jax.tree_util.keystr(key_path))
    return bad


def _files_named(message: str) -> str:
    """The checkpoint file paths a TensorStore/orbax error message mentions (for a one-line report)."""
    import re
    paths = sorted(set(re.findall(r"(/[^\s\"'\]\[,:]*checkpoints/[^\s\"'\]\[,:]+)", message)))
    return f" (files: {', '.join(paths[:3])})" if paths else ""


def _read_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(create=False)  # reads only; creates nothing
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def restore(manager: ocp.CheckpointManager, *, abstract_state, shardings, data_iter=None, step: int | None = None):
    """Restores the latest (or ``step``) state onto ``shardings``, and the data iterator in place if given.

    The target shardings may belong to a different mesh or device count than the run that saved. Raises
    ``CheckpointMismatchError`` (another model: which parameters) or ``CheckpointDamagedError`` (which file).
    """
    step = manager.latest_step() if step is None else step
    step_dir = os.path.join(str(manager.directory), str(step))
    problem = integrity.verify(step_dir)
    if problem not in (None, integrity.MISSING):
        raise CheckpointDamagedError(f"checkpoint step {step} is damaged: {problem}")
    try:
        metadata = ocp.PyTreeCheckpointer().metadata(os.path.join(step_dir, "state"))
        saved_tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
    except Exception as err:  # noqa: BLE001  (any unreadable metadata is damage)
        raise CheckpointDamagedError(f"checkpoint step {step} is damaged: {step_dir}/state metadata unreadable: "
                                     f"{str(err).splitlines()[0][:300]}") from err
    if not saved_tree:
        raise CheckpointDamagedError(f"checkpoint step {step} is damaged: {step_dir}/state has no readable metadata "
                                     "(_METADATA missing or empty)")
    mismatch = describe_mismatch(saved_tree, abstract_state)
    if mismatch:
        raise CheckpointMismatchError(f"checkpoint step {step} under {manager.directory} belongs to another model "
                                      f"or optimizer config than this run: {mismatch}")
    items = {"state": ocp.args.StandardRestore(abstract_with_shardings(abstract_state, shardings))}
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as err:  # noqa: BLE001  (the structure matched: a failing read is a damaged file)
        message = str(err)
        raise CheckpointDamagedError(f"checkpoint step {step} is damaged: reading it failed with "
                                     f"{type(err).__name__}: {message.splitlines()[0][:300] if message else ''}"
                                     f"{_files_named(message)}") from err
    state = restored["state"]
    bad = nonfinite_leaves(state.params, "params") + nonfinite_leaves(state.ema_params, "ema_params")
    if bad:
        raise CheckpointDamagedError(f"checkpoint step {step} is damaged: non-finite values in {len(bad)} "
                                     f"parameters ({', '.join(bad[:3])})")
    return state


def quarantine(workdir: str, step: int) -> str:
    """Moves ``checkpoints/<step>`` aside to ``<step>.damaged`` (kept for inspection, ignored by orbax)."""
    source = os.path.join(checkpoint_dir(workdir), str(step))
    target, n = source + ".damaged", 1
    while os.path.exists(target):
        target, n = f"{source}.damaged{n}", n + 1
    os.rename(source, target)
    return target


def restore_newest_intact(workdir: str, *, abstract_state, shardings, data_iter=None, move_damaged: bool = True,
                          log: Callable[[str], None] = print):
    """The newest step of ``workdir`` that verifies and restores, or None when there is no checkpoint.

    Damaged steps are reported in one line each and (``move_damaged``, process 0) renamed ``<step>.damaged``,
    so a later save of the same step number does not collide and rotation never counts them. A mismatching
    model raises ``CheckpointMismatchError``; if every step is damaged, ``CheckpointDamagedError`` lists them.
    """
    steps = complete_steps(workdir)
    if not steps:
        return None
    problems = []
    for step in reversed(steps):
        manager = _read_manager(workdir)
        try:
            if integrity.verify(os.path.join(checkpoint_dir(workdir), str(step))) == integrity.MISSING:
                log(f"checkpoint step {step} has no integrity manifest (saved before checksums); restoring it "
                    "unverified")
            state = restore(manager, abstract_state=abstract_state, shardings=shardings, data_iter=data_iter,
                            step=step)
        except CheckpointDamagedError as err:
            problems.append(str(err))
            moved = ""
            if move_damaged and jax.process_index() == 0:
                moved = f"; moved to {quarantine(workdir, step)}"
            log(f"{err}{moved}; falling back to an older step")
            continue
        finally:
            manager.close()
        if problems:
            log(f"restored checkpoint step {step}, the newest intact one (skipped {len(problems)} damaged)")
        if move_damaged and jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("stiv_jax checkpoint fallback")
        return state
    raise CheckpointDamagedError(f"every checkpoint under {checkpoint_dir(workdir)} is damaged:\n  "
                                 + "\n  ".join(problems))


def restore_config(workdir: str, step: int | None = None) -> dict:
    """The config JSON stored with a checkpoint of the run in ``workdir``."""
    steps = complete_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    manager = _read_manager(workdir)
    try:
        return manager.restore(steps[-1] if step is None else step,
                               args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    finally:
        manager.close()


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
                                target: Any = None, wanted: Mapping[str, Any] | None = None,
                                verify: bool = True) -> Any:
    """Loads only the parameters (EMA or raw) of a checkpoint; the optimizer state is never read.

    The one reader of parameters out of a train-state checkpoint: sampling (``load_newest_intact_params``), the
    stage transition and export (``stages.transition.restore_params``) and the tests read through it.

    Args:
      workdir_or_path: a run directory, its ``checkpoints/`` directory, or one ``checkpoints/<step>`` directory.
      step: the step to load (latest complete one if None).
      use_ema: load ``ema_params`` (the paper initialises each stage from EMA weights) instead of ``params``.
      target: optional tree of ``jax.ShapeDtypeStruct`` with ``sharding`` (e.g. from
        ``state_shardings(...)[0].params`` + ``abstract_with_shardings``) to restore directly onto a mesh;
        it may cover a subset of the saved parameters. Without it, the full tree comes back as numpy on the host.
      wanted: instead of ``target``, ``{'dit/block_0/...': sharding}``: only these parameters are read, each
        placed with its sharding (shapes and dtypes from the checkpoint's metadata).
      verify: check the step's integrity manifest first (False when the caller has just verified it).

    Returns:
      The ``{'dit': ..., 'text': ...}`` parameter tree.
    """
    item_dir, step = _state_item_dir(workdir_or_path, step)
    problem = integrity.verify(os.path.dirname(item_dir)) if verify else None
    if problem not in (None, integrity.MISSING):
        raise CheckpointDamagedError(f"checkpoint step {step} is damaged: {problem}")
    key = "ema_params" if use_ema else "params"
    checkpointer = ocp.PyTreeCheckpointer()
    if wanted is not None:
        saved = exports.flatten(checkpointer.metadata(item_dir).item_metadata.tree.get(key) or {})
        missing = sorted(set(wanted) - set(saved))
        if missing:
            raise CheckpointMismatchError(f"{item_dir} holds no {key} {', '.join(missing[:4])}")
        target = exports.unflatten({path: jax.ShapeDtypeStruct(saved[path].shape, saved[path].dtype, sharding=sharding)
                                    for path, sharding in wanted.items()})
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


def load_newest_intact_params(workdir: str, *, use_ema: bool = True, log: Callable[[str], None] = print) -> Any:
    """The parameters (EMA or raw, numpy on the host) of the newest step of ``workdir`` that verifies and holds
    only finite values; damaged steps are reported in one line each and left where they are."""
    steps = complete_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir(workdir)}")
    problems = []
    for step in reversed(steps):
        try:
            params = load_params_from_checkpoint(workdir, step, use_ema=use_ema)
            bad = nonfinite_leaves(params)
            if bad:
                raise CheckpointDamagedError(f"checkpoint step {step} holds non-finite values in {', '.join(bad[:4])}")
        except CheckpointDamagedError as err:
            problems.append(str(err))
            log(f"{err}; falling back to an older step")
            continue
        if problems:
            log(f"restored checkpoint step {step}, the newest intact one (skipped {len(problems)} damaged)")
        return params
    raise CheckpointDamagedError(f"every checkpoint under {checkpoint_dir(workdir)} is damaged:\n  "
                                 + "\n  ".join(problems))
