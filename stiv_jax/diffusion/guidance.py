"""Classifier-free guidance for STIV: JIT-CFG, SIT-CFG and CFG-renorm (STIV paper: CFG-renormalisation; joint image-text CFG).

The model is seen through ``model_fn(latents, timesteps, context) -> velocity`` where ``latents`` are
``[n, frames, height, width, channels]``, ``timesteps`` ``[n]`` and ``context`` a pytree of ``[n, ...]`` arrays
(text tokens, micro-conditions). All branches of one guidance rule go through ONE batched call.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from stiv_jax.diffusion.flow import interpolate, replace_frames
from stiv_jax.diffusion.tasks import NULL_IMAGES

ModelFn = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]
GUIDANCE_MODES = ("none", "jit", "sit")


def jit_cfg(cond: jnp.ndarray, uncond: jnp.ndarray, scale: float) -> jnp.ndarray:
    """JIT-CFG: ``F(0, 0) + s (F(c_T, c_I) - F(0, 0))``."""
    return uncond + scale * (cond - uncond)


def sit_cfg(uncond: jnp.ndarray, image_only: jnp.ndarray, full: jnp.ndarray, *, image_scale: float,
            text_scale: float) -> jnp.ndarray:
    """SIT-CFG: ``F(0,0) + s_I (F(c_I,0) - F(0,0)) + s_T (F(c_I,c_T) - F(c_I,0))``."""
    return uncond + image_scale * (image_only - uncond) + text_scale * (full - image_only)


def cfg_renorm(guided: jnp.ndarray, cond: jnp.ndarray, loss_frames: jnp.ndarray | None = None,
               eps: float = 1e-12) -> jnp.ndarray:
    """Rescales ``guided`` per sample to the norm of the conditional velocity ``cond`` (direction kept).

    Args:
      guided, cond: ``[batch, frames, height, width, channels]``.
      loss_frames: optional ``[batch, frames]``; the norms are taken over these (generated) frames only, since
        the velocity of re-imposed conditioning frames is discarded. None: all elements.
    """
    w = jnp.ones(guided.shape[:2]) if loss_frames is None else loss_frames.astype(guided.dtype)
    w = w[:, :, None, None, None]
    axes = tuple(range(1, guided.ndim))
    guided_norm = jnp.sqrt(jnp.sum(jnp.square(guided) * w, axis=axes, keepdims=True))
    cond_norm = jnp.sqrt(jnp.sum(jnp.square(cond) * w, axis=axes, keepdims=True))
    return guided * (cond_norm / jnp.maximum(guided_norm, eps))


@dataclasses.dataclass(frozen=True)
class Guidance:
    """How the sampler combines conditional and unconditional predictions.

    Attributes:
      mode: ``none`` (conditional only), ``jit`` (2 passes) or ``sit`` (3 passes).
      scale: the JIT-CFG scale, or the SIT-CFG text scale.
      image_scale: the SIT-CFG image scale.
      renorm: CFG-renorm to the conditional norm at every step.
      null_image: what the unconditional branch sees in the given frames: ``noisy`` (the given latents noised to
        the current t with the run's initial noise, as a dropped image is seen in training) or ``zero``.
    """

    mode: str = "jit"
    scale: float = 7.5
    image_scale: float = 1.5
    renorm: bool = True
    null_image: str = "noisy"

    def __post_init__(self):
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance mode {self.mode!r}; valid: {', '.join(GUIDANCE_MODES)}")
        if self.null_image not in NULL_IMAGES:
            raise ValueError(f"null_image {self.null_image!r}; valid: {', '.join(NULL_IMAGES)}")

    @classmethod
    def from_config(cls, sample_config, **overrides) -> "Guidance":
        s = sample_config
        fields = dict(mode=s.guidance, scale=s.cfg_scale, image_scale=s.cfg_image_scale, renorm=s.renorm,
                      null_image=s.null_image)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)


def guided_velocity(model_fn: ModelFn, guidance: Guidance, *, latents: jnp.ndarray, timesteps: jnp.ndarray,
                    clean: jnp.ndarray, frame_mask: jnp.ndarray, noise: jnp.ndarray, cond_context: Any,
                    null_context: Any) -> jnp.ndarray:
    """The guided velocity at ``latents`` ``[batch, frames, height, width, channels]``, time ``[batch]``.

    Args:
      clean: the given latents (only the ``frame_mask`` frames are used), same shape as ``latents``.
      frame_mask: ``[batch, frames]`` bool, True for given frames; the conditional branch sees ``clean`` there.
      noise: the sampler's initial noise (builds the ``noisy`` null image).
      cond_context, null_context: model contexts (pytrees of ``[batch, ...]``) with the prompt / empty prompt.
    """
    x_cond = replace_frames(latents, clean, frame_mask)
    null_frames = (interpolate(clean, noise, timesteps) if guidance.null_image == "noisy"
                   else jnp.zeros_like(clean))
    x_null = replace_frames(latents, null_frames, frame_mask)

    def batched(xs, contexts):
        out = model_fn(jnp.concatenate(xs), jnp.concatenate([timesteps] * len(xs)),
                       jax.tree.map(lambda *a: jnp.concatenate(a), *contexts))
        return jnp.split(out, len(xs))

    if guidance.mode == "none":
        return model_fn(x_cond, timesteps, cond_context)
    if guidance.mode == "jit":
        cond, uncond = batched([x_cond, x_null], [cond_context, null_context])
        guided = jit_cfg(cond, uncond, guidance.scale)
    else:
        uncond, image_only, cond = batched([x_null, x_cond, x_cond], [null_context, null_context, cond_context])
        guided = sit_cfg(uncond, image_only, cond, image_scale=guidance.image_scale, text_scale=guidance.scale)
    if guidance.renorm:
        guided = cfg_renorm(guided, cond, ~frame_mask)
    return guided
