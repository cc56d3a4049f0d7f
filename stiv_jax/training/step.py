"""The train step: flow-matching loss (this file) + accumulation, non-finite guard, optimizer and EMA
(``stiv_jax.training.update``). The trainer jits it with explicit shardings and a donated state."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax  # noqa: F401  (type of ``tx``)

from stiv_jax.diffusion import flow, tasks
from stiv_jax.model import maskdit
from stiv_jax.training import finetune
from stiv_jax.training import update as update_lib
from stiv_jax.model.bundle import ModelBundle
from stiv_jax.training.optimizer import learning_rate_schedule
from stiv_jax.training.state import TrainState


def pixels_to_unit(video_uint8: jax.Array) -> jax.Array:
    """uint8 ``[..., 3]`` in [0, 255] -> float32 in [-1, 1] (done on device; batches ship as uint8)."""
    return video_uint8.astype(jnp.float32) / 127.5 - 1.0


def _drop_text(bundle: ModelBundle, batch: dict, drop: jax.Array):
    """``(ids, mask, text)`` with the dropped samples' prompts (``drop`` ``[batch]``) set to the empty prompt.

    ``text`` is the ``(sequence, pooled)`` pair of a batch with precomputed ``text_embeddings``, else None (the
    step encodes ``ids``).
    """
    if "text_embeddings" not in batch:
        null_ids, null_mask = (jnp.asarray(a) for a in bundle.tokenize([""]))
        return (jnp.where(drop[:, None], null_ids, batch["text_ids"]),
                jnp.where(drop[:, None], null_mask, batch["text_mask"]), None)
    if "pooled_text" not in batch:
        raise ValueError("latent records with text_embeddings must also store pooled_text (stiv_jax.data.encode "
                         "writes both)")
    _, null_mask, (null_seq, null_pooled) = bundle.null_text()
    seq, mask = batch["text_embeddings"].astype(jnp.float32), batch["text_mask"].astype(bool)
    if seq.shape[1:] != null_seq.shape[1:]:
        raise ValueError(f"precomputed text_embeddings are {seq.shape[1:]} per sample but config.text gives "
                         f"{null_seq.shape[1:]}; re-encode the shards with this config's text settings")
    seq = jnp.where(drop[:, None, None], null_seq, seq)
    pooled = jnp.where(drop[:, None], null_pooled, batch["pooled_text"].astype(jnp.float32))
    return None, jnp.where(drop[:, None], null_mask, mask), (seq, pooled)


def make_loss_fn(config, bundle: ModelBundle):
    """``loss_fn(params, batch, rng, frozen=None) -> loss``: flow matching with per-sample tasks (frame
    replacement), text dropout and image dropout (STIV paper: objective, frame replacement, condition dropout).

    ``batch`` holds uint8 ``video`` or precomputed ``latents`` ``[batch, frames, height, width, channels]``, and
    ``text_ids``/``text_mask`` or precomputed ``text_embeddings``/``text_mask``/``pooled_text``. ``frozen``: the
    frozen encoder weights (``ModelBundle.frozen_boxed_params``, unboxed); None bakes the host copies in.
    """
    diffusion = config.diffusion
    sampler = tasks.TaskSampler.from_config(diffusion, frames=bundle.latent_shape[0])
    shift = flow.timestep_shift(diffusion, bundle.latent_shape)
    mask_ratio = float(config.model.mask_ratio)
    patch = bundle.dit.config.patch_size
    lora_dropout = bundle.dit.config.lora_rank > 0 and bundle.dit.config.lora_dropout > 0

    def loss_fn(params, batch, rng, frozen=None):
        rng_t, rng_noise, rng_task, rng_mask = jax.random.split(rng, 4)
        frozen = frozen or {}
        if "latents" in batch:
            x1 = batch["latents"].astype(jnp.float32)
        else:
            x1 = bundle.latent_space.encode(frozen.get("latent"), pixels_to_unit(batch["video"]))
        b = x1.shape[0]
        micro = batch.get("micro_conditions")
        stride = None if micro is None else micro[:, tasks.FRAME_STRIDE_INDEX]
        cond = sampler(rng_task, b, stride)
        # Text dropout: the empty string's encoding (the CFG null text); multiview always has empty text.
        ids, mask, text = _drop_text(bundle, batch, cond.drop_text)
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
        velocity = bundle.velocity(params, x_in, t, ids, mask, micro_conditions=micro,
                                   mask_rng=rng_mask if mask_ratio > 0 else None, text=text, frozen=frozen,
                                   dropout_rng=jax.random.fold_in(rng, 7) if lora_dropout else None)
        return flow.flow_matching_loss(velocity, x1, noise, loss_mask)

    return loss_fn


def make_train_step(config, bundle: ModelBundle, tx: optax.GradientTransformation):
    """Returns ``train_step(state, batch, frozen) -> (state, metrics)``; the caller jits it with shardings.

    ``frozen``: the frozen encoder weights for this batch kind (``ModelBundle.frozen_boxed_params``, unboxed and
    placed on the mesh), an argument so they are neither differentiated nor baked into the program.
    """
    loss_fn = make_loss_fn(config, bundle)

    schedule = learning_rate_schedule(config.optim)
    num_micro = int(config.optim.grad_accum_steps or 1)

    patterns = finetune.trainable_patterns(config)

    def train_step(state: TrainState, batch: dict, frozen: dict):
        rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
        # Only the trainable leaves (config.finetune) are differentiated; frozen ones enter as constants.
        mask = finetune.trainable_mask(state.params, patterns)
        full = lambda trained: finetune.merge(mask, trained, state.params)  # noqa: E731
        loss, grads = update_lib.accumulated_loss_and_grads(lambda p, b, r: loss_fn(full(p), b, r, frozen),
                                                            finetune.select(state.params, mask), batch, rng,
                                                            num_micro)
        new_state, metrics = update_lib.guarded_update(state, loss, grads, tx, ema_decay=config.optim.ema_decay,
                                                       mask=mask)
        metrics["learning_rate"] = schedule(state.step - state.skipped_steps)
        return new_state, metrics

    return train_step
