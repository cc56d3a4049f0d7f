"""Which parameters a run trains (``config.finetune``): partial fine-tuning by regex and LoRA adapters.

``config.finetune.trainable`` is a tuple of regexes ``re.search``-ed over '/'-joined parameter paths
(``dit/block_3/temporal_attn/query/kernel``); a parameter trains when any of them matches. Empty means every
parameter trains, unless LoRA is on (``config.finetune.lora.rank > 0``): the adapters (``LORA_PATTERN``) then
always train, alone or beside what the patterns name. Frozen parameters get no gradient, no optimizer state and no update (they stay bit-identical);
the optimizer sees only the trainable leaves (a flat ``{path: leaf}`` dict, ``select``).
"""
from __future__ import annotations

import collections
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

LORA_PATTERN = r"/lora_[ab]$"   # the LoRA adapter leaves (stiv_jax.model.layers.Linear)


def path_str(key_path) -> str:
    """'/'-joined names of a ``jax.tree_util`` key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in key_path)


def trainable_patterns(config) -> tuple[str, ...] | None:
    """The regexes of the trainable parameters of ``config`` (None: every parameter trains)."""
    patterns = tuple(config.finetune.trainable or ())
    if config.finetune.lora.rank and LORA_PATTERN not in patterns:   # adapters always train, beside any pattern
        patterns = patterns + (LORA_PATTERN,)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"config.finetune.trainable has an invalid regex {pattern!r}: {e}") from None
    return patterns or None


def trainable_mask(params, patterns: tuple[str, ...] | None):
    """A tree of bools like ``params`` (True = trains), or None when ``patterns`` is None (all train).

    Raises ``ValueError`` naming ``config.finetune.trainable`` when the patterns match no parameter.
    """
    if patterns is None:
        return None
    compiled = [re.compile(p) for p in patterns]
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: any(p.search(path_str(path)) for p in compiled), params)
    if not any(jax.tree.leaves(mask)):
        raise ValueError(f"config.finetune.trainable={patterns} matches no parameter (paths look like "
                         f"'{path_str(jax.tree_util.tree_flatten_with_path(params)[0][0][0])}'); nothing would train")
    return mask


def _flatten(tree):
    return jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, PartitionSpec))


def select(tree, mask):
    """The trainable leaves of ``tree`` as a flat ``{path: leaf}`` dict (``tree`` itself when ``mask`` is None).

    ``tree`` is shaped like the parameters (values, abstract values or ``PartitionSpec``s); the flat dict is what
    the optimizer and the gradient see, so frozen leaves have neither state nor gradient.
    """
    if mask is None:
        return tree
    leaves = _flatten(tree)[0]
    return {path_str(k): v for (k, v), m in zip(leaves, jax.tree.leaves(mask)) if m}


def merge(mask, trainable, full):
    """``full`` with its trainable leaves replaced by those of ``trainable`` (a ``select``-ed flat dict)."""
    if mask is None:
        return trainable
    leaves, treedef = _flatten(full)
    return jax.tree_util.tree_unflatten(treedef, [trainable.get(path_str(k), v) if m else v
                                                  for (k, v), m in zip(leaves, jax.tree.leaves(mask))])


def group_name(path: str) -> str:
    """The table group of a parameter path: its first three names, block indices folded (``block_*``)."""
    return re.sub(r"_\d+(?=/|$)", "_*", "/".join(path.split("/")[:-1][:3]))


def parameter_table(params, mask) -> str:
    """A printed table of trainable / frozen parameter counts per group (``group_name``) and in total."""
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    flat_mask = dict(jax.tree_util.tree_flatten_with_path(mask)[0]) if mask is not None else None
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        trains = True if flat_mask is None else bool(flat_mask[key_path])
        counts[group_name(path_str(key_path))][0 if trains else 1] += int(np.prod(leaf.shape))
    width = max(len(g) for g in counts) if counts else 5
    lines = [f"{'group':<{width}}  {'trainable':>13}  {'frozen':>13}"]
    for group in sorted(counts):
        lines.append(f"{group:<{width}}  {counts[group][0]:>13,}  {counts[group][1]:>13,}")
    train, frozen = sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
    share = train / max(1, train + frozen)
    lines.append(f"{'total':<{width}}  {train:>13,}  {frozen:>13,}  ({share:.2%} of parameters train)")
    return "\n".join(lines)


def describe(params: Any, patterns) -> str:
    """The start-up report of what trains: the patterns and ``parameter_table``."""
    head = "trainable parameters: all" if patterns is None else f"trainable parameters: {list(patterns)}"
    return head + "\n" + parameter_table(params, trainable_mask(params, patterns))
