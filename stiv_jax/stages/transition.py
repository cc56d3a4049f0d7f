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
import re
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

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


def _path_str(key_path) -> str:
    parts = []
    for k in key_path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def _state_manager(workdir: str) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(ckpt.checkpoint_dir(workdir), item_names=("state", "data_iter", "config"),
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                "config": ocp.JsonCheckpointHandler()})


def open_source(name: str, workdir: str, *, use_ema: bool = True, step: int | None = None) -> SourceCheckpoint:
    """Reads a source's latest (or ``step``) step, config and parameter shapes (metadata only, no weights)."""
    manager = _state_manager(workdir)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"config.init.sources.{name}={workdir!r} has no checkpoint under "
                                f"{ckpt.checkpoint_dir(workdir)}; train that stage first or fix the path")
    metadata = manager.item_metadata(step)["state"]
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    subtree = "ema_params" if use_ema else "params"
    shapes = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = _path_str(key_path)
        if path.startswith(subtree + "/"):
            shapes[path[len(subtree) + 1:]] = tuple(leaf.shape)
    manager.close()
    if not shapes:
        raise ValueError(f"the checkpoint of {workdir} (step {step}) holds no '{subtree}'")
    config = ml_collections.ConfigDict(ckpt.restore_config(workdir, step))
    return SourceCheckpoint(name, workdir, step, config, subtree, shapes)


def restore_params(source: SourceCheckpoint, wanted: dict[str, jax.sharding.Sharding]) -> dict[str, jax.Array]:
    """Restores only the parameters in ``wanted`` (path -> sharding) from ``source``; nothing else is read."""
    manager = _state_manager(source.workdir)
    metadata = manager.item_metadata(source.step)["state"]
    tree = metadata.tree if hasattr(metadata, "tree") else metadata
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    prefix = source.subtree + "/"
    items, args = [], []
    for key_path, leaf in leaves:
        path = _path_str(key_path)
        sharding = wanted.get(path[len(prefix):]) if path.startswith(prefix) else None
        if sharding is None:
            items.append(ocp.PLACEHOLDER)
            args.append(ocp.PLACEHOLDER)
        else:
            items.append(jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding))
            args.append(ocp.ArrayRestoreArgs(sharding=sharding))
    restored = manager.restore(source.step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=jax.tree_util.tree_unflatten(treedef, items), restore_args=jax.tree_util.tree_unflatten(treedef, args))))
    manager.close()
    out = {}
    for key_path, value in jax.tree_util.tree_flatten_with_path(restored["state"])[0]:
        path = _path_str(key_path)
        if path.startswith(prefix) and path[len(prefix):] in wanted:
            out[path[len(prefix):]] = value
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
        source_scale = float(source.config.model.get(key, 1.0))
        expected = source_scale * source_tokens / target_grid[kind]
        actual = config.model.get(key, None)
        if actual is None:
            if abs(expected - 1.0) > 1e-9:
                problems.append(f"config.model has no {key}; {kind} RoPE must be interpolated by {expected:g} "
                                f"({source.name}: {source_tokens} tokens -> {target_grid[kind]})")
            continue
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
    init = config.get("init", None)
    if init is None or not init.sources:
        return state
    sources = {name: open_source(name, workdir, use_ema=init.use_ema) for name, workdir in init.sources.items()}
    target = surgery.flatten(state.params)
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
    params = surgery.unflatten(new_flat)
    log(plan.report(f"stage transition into {config.get('stage', '?')}") + ("\n" + "\n".join(rope_lines)
                                                                          if rope_lines else ""))
    return state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
