"""Linear-interpolant flow matching: ``x_t = t x1 + (1 - t) eps``, target velocity ``x1 - eps`` (t = 1 is data).

Also the training timestep distributions (uniform, logit-normal) and the resolution/duration timestep shift,
and frame replacement: conditioning frames get the clean latents before the model and no loss.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

TIMESTEP_DISTRIBUTIONS = ("uniform", "logit_normal")


def shift_timesteps(t: jnp.ndarray, shift: float) -> jnp.ndarray:
    """Moves timesteps towards noise by ``shift`` (> 1: more time near noise, as for larger videos).

    The SD3 shift ``sigma' = s sigma / (1 + (s - 1) sigma)`` on the noise level ``sigma = 1 - t``, written in
    this codebase's convention (t = 1 is data): ``t' = t / (t + s (1 - t))``. ``shift = 1`` is the identity.
    """
    if shift <= 0:
        raise ValueError(f"timestep shift must be > 0, got {shift}")
    return t / (t + shift * (1.0 - t))


def resolution_shift(latent_shape: Sequence[int], reference_positions: int) -> float:
    """SD3's resolution-dependent shift ``sqrt(n / n_ref)`` extended to duration.

    Args:
      latent_shape: ``[frames, height, width, channels]`` of one latent video.
      reference_positions: latent ``frames * height * width`` at which the shift is 1 (for example the
        low-resolution stage the log-SNR should match). 0 disables the shift (returns 1).
    """
    if reference_positions <= 0:
        return 1.0
    frames, height, width = latent_shape[:3]
    return math.sqrt(frames * height * width / reference_positions)


def timestep_shift(section, latent_shape: Sequence[int]) -> float:
    """The total shift of a config section (``diffusion`` or ``sample``): ``timestep_shift`` times the
    resolution/duration shift from ``shift_reference_positions`` (0: none)."""
    return float(section.timestep_shift) * resolution_shift(latent_shape, int(section.shift_reference_positions))


def sample_timesteps(rng: jax.Array, batch: int, *, distribution: str = "logit_normal", mean: float = 0.0,
                     std: float = 1.0, shift: float = 1.0) -> jnp.ndarray:
    """Training timesteps ``[batch]`` in (0, 1).

    Args:
      distribution: ``uniform`` or ``logit_normal`` (SD3: ``sigmoid(mean + std * normal)``).
      mean, std: logit-normal location and scale (mean > 0 favours data, < 0 favours noise).
      shift: ``shift_timesteps`` applied after drawing (1: none).
    """
    if distribution == "uniform":
        t = jax.random.uniform(rng, (batch,))
    elif distribution == "logit_normal":
        t = jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))
    else:
        raise ValueError(f"config.diffusion.timestep_distribution={distribution!r}; valid: "
                         f"{', '.join(TIMESTEP_DISTRIBUTIONS)}")
    return shift_timesteps(t, shift) if shift != 1.0 else t


def interpolate(x1: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """``x_t = t x1 + (1 - t) noise`` with ``t`` ``[batch]`` broadcast over ``x1`` ``[batch, ...]``."""
    t = t.reshape((-1,) + (1,) * (x1.ndim - 1))
    return t * x1 + (1 - t) * noise


def replace_frames(latents: jnp.ndarray, replacement: jnp.ndarray, frame_mask: jnp.ndarray) -> jnp.ndarray:
    """Frame replacement: ``latents`` with the frames where ``frame_mask`` is True taken from ``replacement``.

    Args:
      latents, replacement: ``[batch, frames, height, width, channels]``.
      frame_mask: ``[batch, frames]`` bool, True for conditioning frames.
    """
    return jnp.where(frame_mask[:, :, None, None, None], replacement, latents)


def flow_matching_loss(velocity: jnp.ndarray, x1: jnp.ndarray, noise: jnp.ndarray,
                       loss_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Mean squared error to the target ``x1 - noise`` over the elements where ``loss_mask`` is 1.

    Args:
      velocity, x1, noise: ``[batch, frames, height, width, channels]``.
      loss_mask: ``[batch, frames]`` (0 for conditioning frames), or ``[batch, frames, height, width]`` (also
        masking positions, e.g. MaskDiT's dropped tokens), or None for all. The mean is taken over the remaining
        elements of the whole batch, so a sample with more conditioning frames weighs less.
    """
    err = jnp.square(velocity.astype(jnp.float32) - (x1 - noise))
    if loss_mask is None:
        return err.mean()
    loss_mask = loss_mask.reshape(loss_mask.shape + (1,) * (err.ndim - loss_mask.ndim))
    weights = jnp.broadcast_to(loss_mask.astype(jnp.float32), err.shape)
    return (err * weights).sum() / jnp.maximum(weights.sum(), 1.0)
