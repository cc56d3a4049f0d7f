"""Starts a stage from the checkpoints of earlier stages (``config.init``), as the STIV paper's progressive recipe (T2I -> T2V -> TI2V) does.

The trainer calls, on a fresh start (no checkpoint in the workdir yet):

    state = transition.initialize_from_sources(config, state)

``config.init.sources`` maps a name to a finished stage's workdir; ``config.init.assign`` picks a source (or
``"new"``) per parameter by regex; ``config.init.inflate_patch_embed`` allows temporal patch 1 -> 2. Only the
parameters a plan needs are read from each checkpoint (orbax partial restore, straight onto the target shardings).
The plan is printed as a report and a mismatch is refused before any weight is read. The RoPE interpolation
scales in ``config.model`` must equal what the source grids imply (positions are scaled so that their range
matches the source's, as RoPE interpolation requires); a wrong or missing scale is an error naming the key and the value expected.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from stiv_jax.checkpointing import exports
from stiv_jax.checkpointing import integrity
from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.stages import surgery

# config.model keys of the RoPE interpolation scales (positions are multiplied by them), and the parameter path
# pattern of the attention that uses each.
ROPE_SCALE_KEYS = {"spatial": "rope_spatial_scale", "temporal": "rope_temporal_scale"}
ROPE_ATTENTION = {"spatial": r"(^|/)spatial_attn/", "temporal": r"(^|/)temporal_attn/"}


@dataclasses.dataclass
class SourceCheckpoint:
    """A finished stage's checkpoint: its config and the shapes of its (EMA) parameters."""

    name: str
    workdir: str
    step: int
    config: ml_collections.ConfigDict
    subtree: str                             # "ema_params" or "params" inside the saved train state
    shapes: dict[str, tuple[int, ...]]       # parameter path ('dit/block_0/...') -> shape

    def describe(self) -> str:
        return f"{self.workdir} step {self.step} ({'EMA' if self.subtree == 'ema_params' else 'raw'} weights)"


def _state_manager(workdir: str) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(create=False)  # reads only; creates nothing
    return ocp.CheckpointManager(ckpt.checkpoint_dir(workdir), item_names=("state", "data_iter", "config"),
                                 options=options,
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                "config": ocp.JsonCheckpointHandler()})


def _pick_step(name: str, workdir: str, step: int | None, log: Callable[[str], None]) -> int:
    """``step`` if given and intact, else the newest step whose integrity manifest verifies (skips said once)."""
    key = "workdir" if name == "export" else f"config.init.sources.{name}"
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{key}={workdir!r} does not exist; give the run directory of a trained stage")
    steps = ckpt.complete_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"{key}={workdir!r} has no checkpoint under {ckpt.checkpoint_dir(workdir)}; "
                                "train that stage first or fix the path")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"checkpoint step {step} not under {ckpt.checkpoint_dir(workdir)}; available: {steps}")
    for candidate in ([step] if step is not None else reversed(steps)):
        problem = integrity.verify(os.path.join(ckpt.checkpoint_dir(workdir), str(candidate)))
        if problem in (None, integrity.MISSING):
            return candidate
        if step is not None:
            raise ckpt.CheckpointDamagedError(f"checkpoint step {step} is damaged: {problem}")
        log(f"checkpoint step {candidate} is damaged: {problem}; falling back to an older step")
    raise ckpt.CheckpointDamagedError(f"every checkpoint under {ckpt.checkpoint_dir(workdir)} is damaged")


def open_source(name: str, workdir: str, *, use_ema: bool = True, step: int | None = None,
                log: Callable[[str], None] = print) -> SourceCheckpoint:
    """Reads a source's latest intact (or ``step``) step, config and parameter shapes (metadata only, no weights).

    A missing ``workdir`` is an error (nothing is created); a damaged newest step is skipped with a line to ``log``.
    """
    step = _pick_step(name, workdir, step, log)
    manager = _state_manager(workdir)
    try:
        metadata = manager.item_metadata(step)["state"]
    finally:
        manager.close()
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    step_dir = os.path.join(ckpt.checkpoint_dir(workdir), str(step))
    if not tree:
        raise ckpt.CheckpointDamagedError(f"checkpoint step {step} is damaged: {step_dir}/state has no readable "
                                          "metadata (_METADATA missing or broken)")
    subtree = "ema_params" if use_ema else "params"
    shapes = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = ckpt.path_str(key_path)
        if path.startswith(subtree + "/"):
            shapes[path[len(subtree) + 1:]] = tuple(leaf.shape)
    if not shapes:
        raise ckpt.CheckpointMismatchError(f"the checkpoint of {workdir} (step {step}) holds no '{subtree}'; saved "
                                           f"entries: {sorted(tree)}")
    config = ml_collections.ConfigDict(ckpt.restore_config(workdir, step))
    return SourceCheckpoint(name, workdir, step, config, subtree, shapes)


def restore_params(source: SourceCheckpoint, wanted: dict[str, jax.sharding.Sharding]) -> dict[str, jax.Array]:
    """Restores only the parameters in ``wanted`` (path -> sharding) from ``source``; nothing else is read.

    Raises ``CheckpointDamagedError`` naming the step when a read fails or a restored parameter is not finite.
    """
    try:   # the step was verified when the source was opened (open_source)
        out = exports.flatten(ckpt.load_params_from_checkpoint(
            source.workdir, source.step, use_ema=source.subtree == "ema_params", wanted=wanted, verify=False))
    except (ckpt.CheckpointDamagedError, ckpt.CheckpointMismatchError):
        raise
    except Exception as err:  # noqa: BLE001  (the metadata matched: a failing read is a damaged file)
        raise ckpt.CheckpointDamagedError(f"checkpoint step {source.step} of {source.workdir} is damaged: reading "
                                          f"it failed with {type(err).__name__}: {str(err).splitlines()[0][:300]}"
                                          ) from err
    bad = ckpt.nonfinite_leaves(out)
    if bad:
        raise ckpt.CheckpointDamagedError(f"checkpoint step {source.step} of {source.workdir} is damaged: non-finite "
                                          f"values in {len(bad)} {source.subtree} ({', '.join(bad[:3])})")
    return out


def token_grid(config) -> dict[str, int]:
    """Token counts along the RoPE axes: ``{'spatial': side of the token grid, 'temporal': temporal tokens}``."""
    spatial = config.data.resolution // (config.latent.factor * config.model.patch_size)
    return {"spatial": spatial, "temporal": max(1, config.data.frames // config.model.temporal_patch)}


def check_rope_scales(config, sources: dict[str, SourceCheckpoint], plan: surgery.TransitionPlan) -> list[str]:
    """Checks ``config.model`` RoPE scales against the grids of the sources that supply each attention.

    The expected scale is ``source_scale * source_tokens / target_tokens``: positions keep the range the source
    was trained on (RoPE interpolation). Temporal attention that is new, or comes from an image model (one
    temporal token, nothing to interpolate), sets no requirement. Returns report lines; raises on a mismatch.
    """
    lines, problems = [], []
    target_grid = token_grid(config)
    for kind, pattern in ROPE_ATTENTION.items():
        supplying = sorted({p.source for p in plan.params if re.search(pattern, p.path) and p.source != surgery.NEW})
        if not supplying:
            continue
        if len(supplying) > 1:
            problems.append(f"{kind} attention comes from several sources {supplying}; its RoPE scale is ambiguous")
            continue
        source = sources[supplying[0]]
        source_tokens = token_grid(source.config)[kind]
        if kind == "temporal" and source_tokens == 1:
            continue
        key = ROPE_SCALE_KEYS[kind]
        # A source's config is its checkpoint's saved config.json: one written before the key existed has none.
        source_scale = float(source.config.model.get(key, 1.0))
        expected = source_scale * source_tokens / target_grid[kind]
        actual = config.model[key]
        if abs(float(actual) - expected) > 1e-6:
            problems.append(f"config.model.{key}={actual} but {source.name} was trained at {source_tokens} {kind} "
                            f"tokens x {source_scale:g}; {target_grid[kind]} tokens need {key}={expected:g}")
        lines.append(f"  rope {kind}: {source.name} {source_tokens} tokens x {source_scale:g} -> "
                     f"{target_grid[kind]} tokens x {float(actual):g}")
    if problems:
        raise surgery.TransitionError("refusing stage transition, RoPE interpolation does not follow the grids:\n  "
                                      + "\n  ".join(problems))
    return lines


def _replicated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    return sharding


def initialize_from_sources(config, state, *, log: Callable[[str], None] = print):
    """Returns ``state`` with parameters (and EMA) from ``config.init.sources``; unchanged if there are none.

    Args:
      config: the new stage's config (``init``, ``model``, ``data``, ``latent`` sections are read).
      state: the freshly initialised, sharded train state (``params`` / ``ema_params`` nested dicts).
      log: where the transition report goes.
    """
    init = config.init
    if not init.sources:
        return state
    sources = {name: open_source(name, workdir, use_ema=init.use_ema) for name, workdir in init.sources.items()}
    target = exports.flatten(state.params)
    plan = surgery.plan_transition(
        {path: tuple(v.shape) for path, v in target.items()}, {n: s.shapes for n, s in sources.items()},
        init.assign, inflate_patch_embed=init.inflate_patch_embed,
        source_descriptions={n: s.describe() for n, s in sources.items()})
    rope_lines = check_rope_scales(config, sources, plan)

    new_flat = dict(target)
    for name, source in sources.items():
        needed = plan.needed(name)
        wanted = {path: target[path].sharding if p.action == "load" else _replicated(target[path].sharding)
                  for path, p in needed.items()}
        restored = restore_params(source, wanted)
        for path, p in needed.items():
            value = surgery.reshape_for_target(p, restored[path]).astype(target[path].dtype)
            new_flat[path] = jax.device_put(value, target[path].sharding)
    params = exports.unflatten(new_flat)
    log(plan.report(f"stage transition into {config.stage or '?'}") + ("\n" + "\n".join(rope_lines)
                                                                          if rope_lines else ""))
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
