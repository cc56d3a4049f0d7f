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


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. Per-step randomness is ``fold_in(seed, step)``, so no RNG is stored."""

    step: jax.Array
    params: Any            # {'dit': ..., 'text': ...}, trainable
    ema_params: Any        # exponential moving average of ``params``
    opt_state: Any


def create_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def state_shardings(boxed_params_fn: Callable[[], Any], tx, mesh, rules) -> tuple[TrainState, TrainState]:
    """Abstract state and its ``NamedSharding``s, derived from the logical names on the parameters.

    Args:
      boxed_params_fn: builds the (``nn.LogicallyPartitioned``-boxed) parameter tree; only traced.
      tx: the optimizer.

    Returns:
      ``(abstract_state, shardings)``: shape/dtype structs and shardings, both as ``TrainState`` trees.
    """
    boxed = jax.eval_shape(boxed_params_fn)
    param_specs = nn.get_partition_spec(boxed)
    params = nn.unbox(boxed)
    abstract = jax.eval_shape(lambda p: create_state(p, tx), params)
    opt_specs = optax.tree_map_params(tx, lambda _, spec: spec, abstract.opt_state, param_specs,
                                      transform_non_params=lambda _: PartitionSpec(),
                                      is_leaf=lambda x: isinstance(x, PartitionSpec))
    specs = TrainState(step=PartitionSpec(), params=param_specs, ema_params=param_specs, opt_state=opt_specs)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, nn.logical_to_mesh_axes(s, rules)), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
    return abstract, shardings


def init_state(boxed_params_fn, tx, mesh, rules) -> tuple[TrainState, TrainState]:
    """Initialises the state directly sharded on ``mesh`` (no host-side full copy). Returns (state, shardings)."""
    _, shardings = state_shardings(boxed_params_fn, tx, mesh, rules)
    with mesh_lib.activate(mesh, rules):
        state = jax.jit(lambda: create_state(nn.unbox(boxed_params_fn()), tx), out_shardings=shardings)()
    return state, shardings
