"""The jitted, sharded train step: flow-matching loss, optimizer update, EMA."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from stiv_jax.diffusion import flow
from stiv_jax.training.model_bundle import ModelBundle
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

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = config.optim.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, params)
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    return train_step
