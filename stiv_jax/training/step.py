"""The train step: flow-matching loss (this file) + accumulation, non-finite guard, optimizer and EMA
(``stiv_jax.training.update``). The trainer jits it with explicit shardings and a donated state."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax  # noqa: F401  (type of ``tx``)

from stiv_jax.diffusion import flow
from stiv_jax.training import update as update_lib
from stiv_jax.training.model_bundle import ModelBundle
from stiv_jax.training.optimizer import learning_rate_schedule
from stiv_jax.training.state import TrainState


def pixels_to_unit(video_uint8: jax.Array) -> jax.Array:
    """uint8 ``[..., 3]`` in [0, 255] -> float32 in [-1, 1] (done on device; batches ship as uint8)."""
    return video_uint8.astype(jnp.float32) / 127.5 - 1.0


def make_train_step(config, bundle: ModelBundle, tx: optax.GradientTransformation):
    """Returns ``train_step(state, batch) -> (state, metrics)``; the caller jits it with shardings."""
    null_ids, null_mask = (jnp.asarray(a) for a in bundle.tokenize([""]))
    diffusion = config.diffusion

    def loss_fn(params, batch, rng):
        rng_t, rng_noise, rng_drop = jax.random.split(rng, 3)
        x1 = bundle.latent_space.encode(None, pixels_to_unit(batch["video"]))
        b = x1.shape[0]
        # Text dropout: replace the prompt with the empty string's encoding (the CFG null text).
        drop = jax.random.bernoulli(rng_drop, diffusion.text_dropout, (b, 1))
        ids = jnp.where(drop, null_ids, batch["text_ids"])
        mask = jnp.where(drop, null_mask, batch["text_mask"])
        t = flow.sample_timesteps(rng_t, b, distribution=diffusion.timestep_distribution,
                                  mean=diffusion.logit_normal_mean, std=diffusion.logit_normal_std)
        noise = jax.random.normal(rng_noise, x1.shape, x1.dtype)
        velocity = bundle.velocity(params, flow.interpolate(x1, noise, t), t, ids, mask)
        return flow.flow_matching_loss(velocity, x1, noise)

    schedule = learning_rate_schedule(config.optim)
    num_micro = int(config.optim.get("grad_accum_steps", 1) or 1)

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
        loss, grads = update_lib.accumulated_loss_and_grads(loss_fn, state.params, batch, rng, num_micro)
        new_state, metrics = update_lib.guarded_update(state, loss, grads, tx, ema_decay=config.optim.ema_decay)
        metrics["learning_rate"] = schedule(state.step - state.skipped_steps)
        return new_state, metrics

    return train_step
