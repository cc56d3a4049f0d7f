"""The train state and its sharded initialisation from logical parameter annotations."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.training import finetune


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. Per-step randomness is ``fold_in(seed, step)``, so no RNG is stored.

    ``step`` counts batches consumed (one per call, skipped or not), so it also gives the data position;
    ``skipped_steps`` counts updates dropped by the non-finite guard and ``nonfinite_streak`` the current run of
    them. The optimizer's own step counter only advances on applied updates.
    """

    step: jax.Array
    params: Any            # {'dit': ..., 'text': ...}, trainable, float32
    ema_params: Any        # exponential moving average of ``params``, sharded like them
    opt_state: Any         # only for the trainable parameters (``config.finetune``; ``finetune.select``)
    skipped_steps: jax.Array
    nonfinite_streak: jax.Array


def create_state(params, tx: optax.GradientTransformation, trainable: tuple[str, ...] | None = None) -> TrainState:
    """A fresh state; ``trainable``: regexes of the trained parameters (``finetune.trainable_patterns``), None
    for all. The optimizer state is built over the trainable leaves only."""
    zero = jnp.zeros((), jnp.int32)
    mask = finetune.trainable_mask(params, trainable)
    return TrainState(step=zero, params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(finetune.select(params, mask)), skipped_steps=zero, nonfinite_streak=zero)


class _ParamInfo:
    """Logical spec and shape of the parameter an optimizer-state leaf belongs to (an opaque pytree leaf)."""

    def __init__(self, spec: PartitionSpec, shape: tuple[int, ...]):
        self.spec, self.shape = spec, tuple(shape)


_NOT_A_PARAM = object()  # marks optimizer-state leaves that belong to no parameter (counters)


def _dropped_axis(param_shape, leaf_shape, field: str | None) -> int | None:
    """Which parameter axis a rank-reduced (factored) moment lacks; ``field`` is ``v_row``/``v_col`` if known."""
    candidates = [i for i in range(len(param_shape))
                  if param_shape[:i] + param_shape[i + 1:] == tuple(leaf_shape)]
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    # Ties in size: follow optax's factoring rule (v_row drops the largest dim, v_col the second largest).
    order = sorted(range(len(param_shape)), key=lambda i: (param_shape[i], i))
    if field == "v_row" and order[-1] in candidates:
        return order[-1]
    if field == "v_col" and order[-2] in candidates:
        return order[-2]
    return candidates[0]


def opt_state_logical_specs(tx: optax.GradientTransformation, abstract_opt_state, param_specs, abstract_params):
    """Logical ``PartitionSpec`` of every optimizer-state leaf, derived from its parameter's spec.

    A leaf shaped like its parameter takes the parameter's spec; a factored moment (one axis fewer) keeps the
    spec of its surviving axes; anything else (step counters, size-1 placeholders) is replicated.
    """
    info = jax.tree.map(lambda s, p: _ParamInfo(s, p.shape), param_specs, abstract_params,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
    per_leaf_info = optax.tree_map_params(tx, lambda _, i: i, abstract_opt_state, info,
                                          transform_non_params=lambda _: _NOT_A_PARAM,
                                          is_leaf=lambda x: isinstance(x, _ParamInfo))

    def spec_for(path, leaf, param_info):
        if not isinstance(param_info, _ParamInfo) or not hasattr(leaf, "shape"):
            return PartitionSpec()
        spec = tuple(param_info.spec) + (None,) * (len(param_info.shape) - len(param_info.spec))
        if tuple(leaf.shape) == param_info.shape:
            return PartitionSpec(*spec)
        if len(leaf.shape) == len(param_info.shape) - 1:
            field = next((k.name for k in reversed(path) if isinstance(k, jax.tree_util.GetAttrKey)), None)
            axis = _dropped_axis(param_info.shape, leaf.shape, field)
            if axis is not None:
                return PartitionSpec(*(spec[:axis] + spec[axis + 1:]))
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(
        spec_for, abstract_opt_state, per_leaf_info)


def state_logical_specs(boxed_params_fn: Callable[[], Any], tx, *,
                        trainable: tuple[str, ...] | None = None) -> tuple[TrainState, TrainState, Any]:
    """``(abstract_state, logical_specs, boxed_abstract_params)`` of the state built from ``boxed_params_fn``."""
    boxed = jax.eval_shape(boxed_params_fn)
    param_specs = nn.get_partition_spec(boxed)
    params = nn.unbox(boxed)
    abstract = jax.eval_shape(lambda p: create_state(p, tx, trainable), params)
    mask = finetune.trainable_mask(params, trainable)
    opt_specs = opt_state_logical_specs(tx, abstract.opt_state, finetune.select(param_specs, mask),
                                        finetune.select(params, mask))
    scalar = PartitionSpec()
    specs = TrainState(step=scalar, params=param_specs, ema_params=param_specs, opt_state=opt_specs,
                       skipped_steps=scalar, nonfinite_streak=scalar)
    return abstract, specs, boxed


def state_shardings(boxed_params_fn: Callable[[], Any], tx, mesh, rules, *,
                    trainable: tuple[str, ...] | None = None) -> tuple[TrainState, TrainState]:
    """Abstract state and its ``NamedSharding``s, derived from the logical names on the parameters.

    Args:
      boxed_params_fn: builds the (``nn.LogicallyPartitioned``-boxed) parameter tree; only traced.
      tx: the optimizer.
      trainable: regexes of the trained parameters (``finetune.trainable_patterns``); None: all.

    Returns:
      ``(abstract_state, shardings)``: shape/dtype structs and shardings, both as ``TrainState`` trees.
    """
    abstract, specs, _ = state_logical_specs(boxed_params_fn, tx, trainable=trainable)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(s, rules)), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    return abstract, shardings


def init_state(boxed_params_fn, tx, mesh, rules, *,
               trainable: tuple[str, ...] | None = None) -> tuple[TrainState, TrainState]:
    """Initialises the state directly sharded on ``mesh`` (no host-side full copy). Returns (state, shardings)."""
    _, shardings = state_shardings(boxed_params_fn, tx, mesh, rules, trainable=trainable)
    with mesh_lib.activate(mesh, rules):
        state = jax.jit(lambda: create_state(nn.unbox(boxed_params_fn()), tx, trainable),
                        out_shardings=shardings)()
    return state, shardings


def frozen_shardings(frozen_boxed: dict, mesh, rules) -> dict:
    """``NamedSharding``s of frozen encoder weights: boxed leaves shard by their logical names under ``rules``
    (a T5-XXL encoder spreads over ``fsdp`` like the DiT); plain leaves (the VAE) are replicated."""
    return jax.tree.map(lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(s, rules)),
                        nn.get_partition_spec(frozen_boxed), is_leaf=lambda x: isinstance(x, PartitionSpec))


def place_frozen(frozen_boxed: dict, mesh, rules) -> tuple[dict, dict]:
    """Frozen encoder weights (``ModelBundle.frozen_boxed_params``) on ``mesh``: ``(values, shardings)``."""
    shardings = frozen_shardings(frozen_boxed, mesh, rules)
    return jax.device_put(nn.unbox(frozen_boxed), shardings), shardings
