"""Weight surgery between training stages: which source each parameter comes from, how it is reshaped, and a report.

Works on flat parameter dicts keyed by '/'-joined paths (``dit/block_3/temporal_attn/out/kernel``). A plan is made
from shapes only (no weights are read), so a mismatch is refused before anything is loaded. The rules:

- ``assign``: ``(regex, source)`` pairs, first match wins; ``source`` names a checkpoint or is ``"new"`` (keep the
  fresh initialisation, e.g. temporal attention whose output projection starts at zero).
- A parameter whose source lacks it, whose shape differs with no reshape rule, or that no pattern covers is an
  error naming every such parameter.
- Reshapes (only with ``inflate_patch_embed``): temporal patch 1 -> k. The patch-embed kernel is copied k times
  along its temporal (outermost input) axis and divided by k, so a static video embeds as the image did; the output
  projection is copied k times along its temporal (outermost output) axis, so each frame of a token gets the
  image model's prediction (STIV paper: patch-embedding inflation).
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Mapping

import jax.numpy as jnp
import numpy as np


NEW = "new"
# Parameters that change shape with the temporal patch, and how: "inflate" divides the copies by k (input side),
# "tile" keeps them (output side).
TEMPORAL_PATCH_RESHAPES = ((r"(^|/)patch_embed/proj/kernel$", "inflate"),
                           (r"(^|/)final_proj/(kernel|bias)$", "tile"))


class TransitionError(ValueError):
    """A stage transition that would silently mismatch; the message names every offending parameter."""


@dataclasses.dataclass(frozen=True)
class ParamPlan:
    """Where one target parameter comes from."""

    path: str
    source: str                      # a source name, or NEW
    action: str                      # "load", "inflate", "tile" or "new"
    target_shape: tuple[int, ...]
    source_shape: tuple[int, ...] | None = None
    factor: int = 1                  # copies along the temporal axis for inflate / tile


@dataclasses.dataclass
class TransitionPlan:
    """The per-parameter plan, plus the source parameters nothing takes."""

    params: list[ParamPlan]
    dropped: dict[str, list[str]]    # source -> paths present in the source but loaded into no target parameter
    sources: dict[str, str]          # source -> description (workdir, step, EMA or not)

    def by_action(self, action: str) -> list[ParamPlan]:
        return [p for p in self.params if p.action == action]

    def needed(self, source: str) -> dict[str, ParamPlan]:
        """Target plans reading from ``source``, keyed by path."""
        return {p.path: p for p in self.params if p.source == source}

    def report(self, title: str = "stage transition") -> str:
        """Human-readable summary: parameters loaded, reshaped, new and dropped (block indices folded)."""
        size = lambda plans: sum(int(np.prod(p.target_shape)) for p in plans)  # noqa: E731
        lines = [f"{title}: {len(self.params)} target tensors, {size(self.params) / 1e6:.2f}M values"]
        for name, desc in self.sources.items():
            lines.append(f"  source {name}: {desc}")
        loaded = self.by_action("load")
        per_source = collections.Counter(p.source for p in loaded)
        lines.append(f"  loaded   {len(loaded):5d} tensors ({size(loaded) / 1e6:.2f}M values): "
                     + ", ".join(f"{n} from {s}" for s, n in sorted(per_source.items())))
        for name, plans in _group(loaded):
            lines.append(f"      {name}  <- {plans[0].source}" + (f"  x{len(plans)}" if len(plans) > 1 else ""))
        reshaped = [p for p in self.params if p.action in ("inflate", "tile")]
        lines.append(f"  reshaped {len(reshaped):5d} tensors")
        for p in reshaped:
            how = "copied along time and divided" if p.action == "inflate" else "copied along time"
            lines.append(f"      {p.path}  <- {p.source} {list(p.source_shape)} -> {list(p.target_shape)} "
                         f"({how} x{p.factor})")
        new = self.by_action("new")
        lines.append(f"  new      {len(new):5d} tensors ({size(new) / 1e6:.2f}M values, fresh initialisation)")
        for name, plans in _group(new):
            lines.append(f"      {name}" + (f"  x{len(plans)}" if len(plans) > 1 else ""))
        for source, paths in self.dropped.items():
            lines.append(f"  dropped  {len(paths):5d} tensors of {source} (not in the target model)")
            for name, group in _group_paths(paths):
                lines.append(f"      {name}" + (f"  x{len(group)}" if len(group) > 1 else ""))
        return "\n".join(lines)


def _fold(path: str) -> str:
    return re.sub(r"block_\d+", "block_*", path)


def _group_paths(paths):
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(_fold(path), []).append(path)
    return list(groups.items())


def _group(plans: list[ParamPlan]):
    groups: dict[str, list[ParamPlan]] = {}
    for p in plans:
        groups.setdefault(_fold(p.path), []).append(p)
    return list(groups.items())


def _temporal_factor(source_shape, target_shape) -> tuple[int, int] | None:
    """``(axis, k)`` when the shapes differ on exactly one axis by an integer factor k > 1, else None."""
    if len(source_shape) != len(target_shape):
        return None
    diff = [i for i, (s, t) in enumerate(zip(source_shape, target_shape)) if s != t]
    if len(diff) != 1 or target_shape[diff[0]] % source_shape[diff[0]]:
        return None
    return diff[0], target_shape[diff[0]] // source_shape[diff[0]]


def plan_transition(target_shapes: Mapping[str, tuple[int, ...]],
                    source_shapes: Mapping[str, Mapping[str, tuple[int, ...]]],
                    assign, *, inflate_patch_embed: bool = False,
                    source_descriptions: Mapping[str, str] | None = None) -> TransitionPlan:
    """Plans a transition from shapes; raises ``TransitionError`` naming every parameter that cannot be planned.

    Args:
      target_shapes: target path -> shape (the freshly initialised model of the new stage).
      source_shapes: source name -> (path -> shape) of each source checkpoint's parameters.
      assign: ``(regex, source name | "new")`` pairs; the first pattern that ``re.search``-matches a path wins.
      inflate_patch_embed: allow the temporal-patch reshapes of ``TEMPORAL_PATCH_RESHAPES``.
      source_descriptions: source name -> text for the report.
    """
    assign = [(re.compile(pattern), source) for pattern, source in assign]
    unknown = sorted({s for _, s in assign if s != NEW and s not in source_shapes})
    if unknown:
        raise TransitionError(f"config.init.assign names sources {unknown} that config.init.sources lacks "
                              f"(sources: {sorted(source_shapes)})")
    plans, problems = [], collections.defaultdict(list)
    for path, shape in sorted(target_shapes.items()):
        shape = tuple(shape)
        source = next((s for pattern, s in assign if pattern.search(path)), None)
        if source is None:
            problems["covered by no config.init.assign pattern"].append(path)
            continue
        if source == NEW:
            plans.append(ParamPlan(path, NEW, "new", shape))
            continue
        src_shape = source_shapes[source].get(path)
        if src_shape is None:
            problems[f"missing from source {source!r}"].append(path)
            continue
        src_shape = tuple(src_shape)
        if src_shape == shape:
            plans.append(ParamPlan(path, source, "load", shape, src_shape))
            continue
        rule = next((how for pattern, how in TEMPORAL_PATCH_RESHAPES if re.search(pattern, path)), None)
        factor = _temporal_factor(src_shape, shape)
        if rule and factor and inflate_patch_embed:
            plans.append(ParamPlan(path, source, rule, shape, src_shape, factor[1]))
        else:
            hint = " (set config.init.inflate_patch_embed=True to inflate)" if rule and factor else ""
            problems[f"shape differs from source {source!r}{hint}"].append(
                f"{path}: source {list(src_shape)} vs target {list(shape)}")
    if problems:
        lines = [f"refusing stage transition, {sum(map(len, problems.values()))} parameter(s) do not match:"]
        for why, paths in problems.items():
            lines.append(f"  {why}:")
            lines.extend(f"    {p}" for p in paths)
        raise TransitionError("\n".join(lines))
    dropped = {}
    for name, shapes in source_shapes.items():
        used = {p.path for p in plans if p.source == name}
        unused = sorted(set(shapes) - used)
        if unused:
            dropped[name] = unused
    descriptions = dict(source_descriptions or {name: name for name in source_shapes})
    return TransitionPlan(params=plans, dropped=dropped, sources=descriptions)


def reshape_for_target(plan: ParamPlan, value):
    """The source ``value`` reshaped per ``plan`` (numpy or jax array; identity for "load")."""
    if plan.action == "load":
        return value
    axis, k = _temporal_factor(plan.source_shape, plan.target_shape)
    xp = np if isinstance(value, np.ndarray) else jnp
    copies = xp.concatenate([value] * k, axis=axis)
    return copies / k if plan.action == "inflate" else copies
