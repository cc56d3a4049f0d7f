"""The jitted, sharded train step: flow-matching loss, optimizer update, EMA."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from stiv_jax.diffusion import flow, tasks
from stiv_jax.model import maskdit
from stiv_jax.training.model_bundle import ModelBundle
from stiv_jax.training.state import TrainState


def pixels_to_unit(video_uint8: jax.Array) -> jax.Array:
    """uint8 ``[..., 3]`` in [0, 255] -> float32 in [-1, 1] (done on device; batches ship as uint8)."""
    return video_uint8.astype(jnp.float32) / 127.5 - 1.0


def model_velocity(bundle: ModelBundle, params, latents, timesteps, ids, mask, micro_conditions=None,
                   mask_rng=None):
    """``bundle.velocity`` with micro-conditions ``[batch, 6]`` (None: the bundle's defaults) and MaskDiT key."""
    return bundle.velocity(params, latents, timesteps, ids, mask, micro_conditions=micro_conditions,
                           mask_rng=mask_rng)


def make_loss_fn(config, bundle: ModelBundle):
    """``loss_fn(params, batch, rng) -> loss``: flow matching with per-sample tasks (frame replacement),
    text dropout and image dropout (STIV_SPEC 2.9, 4.1, 4.2, 7)."""
    null_ids, null_mask = (jnp.asarray(a) for a in bundle.tokenize([""]))
    diffusion = config.diffusion
    sampler = tasks.TaskSampler.from_config(diffusion, frames=bundle.latent_shape[0])
    shift = flow.timestep_shift(diffusion, bundle.latent_shape)
    mask_ratio = float(config.model.get("mask_ratio", 0.0))
    patch = bundle.dit.config.patch_size

    def loss_fn(params, batch, rng):
        rng_t, rng_noise, rng_task, rng_mask = jax.random.split(rng, 4)
        x1 = bundle.latent_space.encode(None, pixels_to_unit(batch["video"]))
        b = x1.shape[0]
        micro = batch.get("micro_conditions")
        stride = None if micro is None else micro[:, tasks.FRAME_STRIDE_INDEX]
        cond = sampler(rng_task, b, stride)
        # Text dropout: the empty string's encoding (the CFG null text); multiview always has empty text.
        ids = jnp.where(cond.drop_text[:, None], null_ids, batch["text_ids"])
        mask = jnp.where(cond.drop_text[:, None], null_mask, batch["text_mask"])
        t = flow.sample_timesteps(rng_t, b, distribution=diffusion.timestep_distribution,
                                  mean=diffusion.logit_normal_mean, std=diffusion.logit_normal_std, shift=shift)
        noise = jax.random.normal(rng_noise, x1.shape, x1.dtype)
        # Frame replacement: given frames enter clean (or zero when the image is dropped under null_image=zero).
        x_in = cond.model_input(flow.interpolate(x1, noise, t), x1)
        loss_mask = cond.loss_mask
        if mask_ratio > 0:
            # MaskDiT: the loss is taken on the kept spatial tokens only (same positions in every frame).
            keep = maskdit.keep_mask(rng_mask, batch=b, grid_hw=(x1.shape[2] // patch, x1.shape[3] // patch),
                                     ratio=mask_ratio)
            keep = jnp.repeat(jnp.repeat(keep, patch, axis=1), patch, axis=2)
            loss_mask = loss_mask[:, :, None, None] * keep[:, None].astype(jnp.float32)
        velocity = model_velocity(bundle, params, x_in, t, ids, mask, micro,
                                  mask_rng=rng_mask if mask_ratio > 0 else None)
        return flow.flow_matching_loss(velocity, x1, noise, loss_mask)

    return loss_fn


def make_train_step(config, bundle: ModelBundle, tx: optax.GradientTransformation):
    """Returns ``train_step(state, batch) -> (state, metrics)``; the caller jits it with shardings."""
    loss_fn = make_loss_fn(config, bundle)

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
