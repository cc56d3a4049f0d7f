"""Named logical-axis-rule presets (``config.mesh.rules``) and the parameter-sharding coverage check.

A preset maps every logical name the model uses to mesh axes. Pick one by name in the config
(``config.mesh.rules = 'fsdp_context'``) or give explicit ``config.mesh.logical_rules`` pairs, which win.

| preset          | weights                          | activations                                     |
| --------------- | -------------------------------- | ----------------------------------------------- |
| ``fsdp``        | ``embed`` over ``fsdp``          | batch over ``data, fsdp``                       |
| ``fsdp_tensor`` | + ``heads``/``mlp`` over tensor  | + heads and MLP hidden over ``tensor``          |
| ``fsdp_context``| ``embed`` over ``fsdp, context`` | + video tokens (``activation_length``) over ``context`` |
| ``default``     | fsdp + tensor + context together (the skeleton's ``DEFAULT_LOGICAL_RULES``)       |
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

Rules = tuple[tuple[str, Any], ...]

# Default logical -> mesh rules: batch over data+fsdp, weights FSDP-sharded on their embed dimension,
# heads and MLP hidden over tensor, video tokens over context. A name with no rule is replicated.
DEFAULT_LOGICAL_RULES: Rules = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_batch_length", ("data", "fsdp", "context")),   # batch x tokens, folded (temporal attention)
    ("activation_length", "context"),
    ("activation_frames", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_text_length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("lora_rank", None),          # LoRA adapters: the rank axis is small, never sharded
    ("lora_features", "fsdp"),    # their flattened wide side (in or out features): sharded like embed
    ("vocab", "tensor"),
    ("layers", None),
    ("norm", None),
)


_BATCH = ("activation_batch", ("data", "fsdp"))
# Temporal attention folds the spatial tokens into the batch ([batch * tokens, frames, ...]). Without context
# parallelism that dimension is sharded like the batch (below); fsdp_context (and default) add ``context``, the
# tokens' axis, so the fold stays local.
_BATCH_TOKENS = ("activation_batch_length", ("data", "fsdp"))
_REPLICATED_ACTIVATIONS = (("activation_frames", None), ("activation_embed", None),
                           ("activation_text_length", None), ("head_dim", None), ("layers", None), ("norm", None),
                           ("lora_rank", None))

PRESETS: dict[str, Rules] = {
    "fsdp": (_BATCH, _BATCH_TOKENS, ("activation_length", None), ("activation_heads", None),
             ("activation_mlp", None), ("embed", "fsdp"), ("lora_features", "fsdp"), ("mlp", None), ("heads", None),
             ("vocab", None)) + _REPLICATED_ACTIVATIONS,
    "fsdp_tensor": (_BATCH, _BATCH_TOKENS, ("activation_length", None), ("activation_heads", "tensor"),
                    ("activation_mlp", "tensor"), ("embed", "fsdp"), ("lora_features", "fsdp"), ("mlp", "tensor"),
                    ("heads", "tensor"), ("vocab", None)) + _REPLICATED_ACTIVATIONS,
    # Context parallelism: the context axis also shards weights (as FSDP), else each context group would
    # hold a full replica of the parameters and optimizer state.
    "fsdp_context": (_BATCH, ("activation_batch_length", ("data", "fsdp", "context")),
                     ("activation_length", "context"), ("activation_heads", None), ("activation_mlp", None),
                     ("embed", ("fsdp", "context")), ("lora_features", ("fsdp", "context")), ("mlp", None),
                     ("heads", None), ("vocab", None))
            + _REPLICATED_ACTIVATIONS,
}


def preset_rules(name: str) -> Rules:
    """The rules of preset ``name`` (``config.mesh.rules``)."""
    if name == "default":
        return DEFAULT_LOGICAL_RULES
    if name not in PRESETS:
        raise ValueError(f"config.mesh.rules={name!r}; valid presets: default, {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _uses_axis(spec, axis: str) -> bool:
    for entry in spec:
        if entry == axis or (isinstance(entry, tuple) and axis in entry):
            return True
    return False


def sharded_fraction(abstract_params, shardings, axis: str = "fsdp") -> tuple[float, list[tuple[str, int]]]:
    """Fraction of parameter bytes partitioned over mesh ``axis``, and the (path, bytes) left replicated on it."""
    total, sharded, replicated = 0, 0, []
    flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings)):
        nbytes = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
        total += nbytes
        if _uses_axis(sharding.spec, axis):
            sharded += nbytes
        else:
            replicated.append((jax.tree_util.keystr(path), nbytes))
    return (sharded / total if total else 1.0), sorted(replicated, key=lambda r: -r[1])


def check_parameter_sharding(abstract_params, shardings, mesh, *, min_fraction: float = 0.98) -> float:
    """Raises if fewer than ``min_fraction`` of parameter bytes are sharded over ``fsdp`` when ``fsdp > 1``.

    Returns the sharded fraction (1.0 when the mesh has no FSDP axis to shard over).
    """
    if mesh.shape.get("fsdp", 1) <= 1:
        return 1.0
    fraction, replicated = sharded_fraction(abstract_params, shardings, "fsdp")
    if fraction < min_fraction:
        worst = ", ".join(f"{p} ({b / 2**20:.2f} MiB)" for p, b in replicated[:8])
        raise ValueError(
            f"only {fraction:.1%} of parameter bytes are sharded over the fsdp axis (need >= {min_fraction:.0%}); "
            f"largest replicated parameters: {worst}. Give their logical axes a rule in config.mesh.rules / "
            f"config.mesh.logical_rules, or lower config.mesh.min_sharded_fraction")
    return fraction


def describe_parameter_shardings(boxed_abstract_params, rules, mesh) -> list[str]:
    """One line per parameter: path, shape, logical axes and the physical (mesh) ``PartitionSpec``."""
    specs = nn.get_partition_spec(boxed_abstract_params)
    params = nn.unbox(boxed_abstract_params)
    lines = []
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for (path, leaf), logical in zip(jax.tree_util.tree_flatten_with_path(params)[0], flat_specs):
        physical = nn.logical_to_mesh_axes(logical, rules)
        lines.append(f"param {jax.tree_util.keystr(path):70s} {str(tuple(leaf.shape)):18s} "
                     f"logical={tuple(logical)} physical={tuple(physical)}")
    return lines
