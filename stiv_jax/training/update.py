"""The model-agnostic half of a train step: gradient accumulation, the non-finite guard, optimizer and EMA.

The loss (``stiv_jax.training.step``) is any ``loss_fn(params, batch, rng) -> scalar``; everything here works
for any such function, which is what the tests exercise with small analytic losses.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from stiv_jax.parallel.mesh import shard_logical
from stiv_jax.training import finetune
from stiv_jax.training.state import TrainState

LossFn = Callable[[Any, dict, jax.Array], jax.Array]


def split_microbatches(batch: dict, num_micro: int) -> dict:
    """``[batch, ...]`` leaves -> ``[num_micro, batch / num_micro, ...]``, micro-batch ``i`` = rows ``i::num_micro``.

    Taking strided rows keeps every micro-batch spread over all batch shards (a contiguous split would put whole
    micro-batches on a subset of devices).
    """
    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(f"batch of {x.shape[0]} is not divisible by config.optim.grad_accum_steps={num_micro}")
        return jnp.moveaxis(x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]), 1, 0)
    return jax.tree.map(split, batch)


def accumulated_loss_and_grads(loss_fn: LossFn, params, batch: dict, rng: jax.Array, num_micro: int):
    """Mean loss and gradient over ``num_micro`` equal micro-batches (one when ``num_micro == 1``).

    Gradients accumulate in float32 in a ``lax.scan``, so activation memory is that of one micro-batch.
    Micro-batch ``i`` draws its randomness from ``fold_in(rng, i)``.
    """
    grad_fn = jax.value_and_grad(loss_fn)
    if num_micro == 1:
        return grad_fn(params, batch, rng)
    micro = split_microbatches(batch, num_micro)

    def body(carry, inputs):
        loss_sum, grad_sum = carry
        index, micro_batch = inputs
        micro_batch = jax.tree.map(lambda x: shard_logical(x, ("activation_batch",) + (None,) * (x.ndim - 1)),
                                   micro_batch)
        loss, grads = grad_fn(params, micro_batch, jax.random.fold_in(rng, index))
        grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
        return (loss_sum + loss, grad_sum), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                           (jnp.arange(num_micro), micro))
    grads = jax.tree.map(lambda g, p: (g / num_micro).astype(p.dtype), grad_sum, params)
    return loss_sum / num_micro, grads


def guarded_update(state: TrainState, loss: jax.Array, grads, tx: optax.GradientTransformation, *,
                   ema_decay: float, mask=None) -> tuple[TrainState, dict]:
    """Applies ``grads`` unless the loss, the gradients or the update itself (a NaN learning rate, an optimizer
    statistic overflowing) are NaN/Inf, in which case the update is skipped.

    ``mask``: the trainable-parameter tree (``finetune.trainable_mask``); ``grads`` then holds the trainable
    leaves only (``finetune.select``) and frozen parameters and their EMA are passed through untouched.

    A skipped step leaves parameters, EMA and optimizer state untouched, advances ``step`` (the batch is
    consumed), and bumps ``skipped_steps`` and ``nonfinite_streak``; an applied step resets the streak.
    """
    grad_norm = optax.tree.norm(grads)
    trained = finetune.select(state.params, mask)
    updates, new_opt_state = tx.update(grads, state.opt_state, trained)
    update_norm = optax.tree.norm(updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    new_trained = optax.apply_updates(trained, updates)
    new_params = finetune.merge(mask, new_trained, state.params)
    new_ema = finetune.merge(mask, jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p,
                                                finetune.select(state.ema_params, mask), new_trained),
                             state.ema_params)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    skipped = (~finite).astype(jnp.int32)
    new_state = state.replace(
        step=state.step + 1, params=keep(new_params, state.params), ema_params=keep(new_ema, state.ema_params),
        opt_state=keep(new_opt_state, state.opt_state), skipped_steps=state.skipped_steps + skipped,
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    metrics = {"loss": loss, "grad_norm": grad_norm, "update_norm": update_norm, "update_skipped": skipped,
               "skipped_steps": new_state.skipped_steps, "nonfinite_streak": new_state.nonfinite_streak}
    return new_state, metrics
