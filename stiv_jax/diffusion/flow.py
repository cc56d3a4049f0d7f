"""Linear-interpolant flow matching: ``x_t = t x1 + (1 - t) eps``, target velocity ``x1 - eps``."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def sample_timesteps(rng: jax.Array, batch: int, *, distribution: str = "logit_normal", mean: float = 0.0,
                     std: float = 1.0) -> jnp.ndarray:
    """Training timesteps ``[batch]`` in (0, 1) from ``uniform`` or ``logit_normal`` (SD3)."""
    if distribution == "uniform":
        return jax.random.uniform(rng, (batch,))
    if distribution == "logit_normal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,)))
    raise ValueError(f"config.diffusion.timestep_distribution={distribution!r}; valid: uniform, logit_normal")


def interpolate(x1: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """``x_t = t x1 + (1 - t) noise`` with ``t`` ``[batch]`` broadcast over ``x1`` ``[batch, ...]``."""
    t = t.reshape((-1,) + (1,) * (x1.ndim - 1))
    return t * x1 + (1 - t) * noise


def flow_matching_loss(velocity: jnp.ndarray, x1: jnp.ndarray, noise: jnp.ndarray,
                       loss_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """Mean squared error to the target ``x1 - noise`` over the elements where ``loss_mask`` is 1.

    Args:
      velocity, x1, noise: ``[batch, frames, height, width, channels]``.
      loss_mask: ``[batch, frames]`` (0 for conditioning frames) or None for all frames.
    """
    err = jnp.square(velocity.astype(jnp.float32) - (x1 - noise))
    if loss_mask is None:
        return err.mean()
    weights = jnp.broadcast_to(loss_mask[:, :, None, None, None].astype(jnp.float32), err.shape)
    return (err * weights).sum() / jnp.maximum(weights.sum(), 1.0)
