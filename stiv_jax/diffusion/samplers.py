"""Samplers integrating the learned velocity from t = 0 (noise) to t = 1 (data): Euler, Heun, and an SDE.

Conditioning frames are re-imposed after every (sub-)step, so the returned latents equal the given ones there
exactly and the model always sees them clean (STIV paper: frame replacement at inference).

The SDE has the same marginals as the ODE (SiT): ``dx = [v + w/2 * score] dt + sqrt(w) dW`` with the score of
the linear interpolant ``score = -(x - t v) / (1 - t)`` and diffusion ``w(t) = g (1 - t)`` (``g`` =
``noise_scale``), so the drift ``v - g/2 (x - t v)`` stays finite; the last step is deterministic.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from stiv_jax.diffusion.flow import replace_frames, shift_timesteps

VelocityFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]
SOLVERS = ("euler", "heun", "sde")


def timestep_grid(num_steps: int, shift: float = 1.0) -> np.ndarray:
    """``[num_steps + 1]`` times from 0 to 1, uniform then shifted (``shift`` > 1 spends more steps near noise)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return np.asarray(shift_timesteps(np.linspace(0.0, 1.0, num_steps + 1), shift), np.float64)


def sample(velocity_fn: VelocityFn, noise: jnp.ndarray, *, num_steps: int, solver: str = "euler",
           shift: float = 1.0, rng: jax.Array | None = None, noise_scale: float = 1.0,
           clean: jnp.ndarray | None = None, frame_mask: jnp.ndarray | None = None,
           progress: bool | str = False) -> jnp.ndarray:
    """Integrates ``dx/dt = velocity_fn(x, t)`` from ``noise`` at t = 0 to t = 1.

    Args:
      velocity_fn: ``(x [batch, frames, height, width, channels], t [batch]) -> velocity`` (same shape as x).
      noise: the state at t = 0, ``[batch, frames, height, width, channels]``.
      num_steps: solver steps (Heun evaluates the model twice per step).
      solver: ``euler``, ``heun`` (2nd order) or ``sde`` (Euler-Maruyama; needs ``rng``).
      rng: the SDE's key, or ``[batch]`` keys (one per sample, so a sample does not depend on its batch).
      shift: timestep shift of the grid (``timestep_grid``).
      noise_scale: ``g`` of the SDE diffusion ``w(t) = g (1 - t)``.
      clean, frame_mask: given latents (``[batch, frames, ...]``) and ``[batch, frames]`` bool; the masked frames
        are set to ``clean`` before every model call and in the result.
      progress: show a tqdm bar (a string is its description).

    Returns:
      Latents at t = 1, ``[batch, frames, height, width, channels]``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"config.sample.solver={solver!r}; valid: {', '.join(SOLVERS)}")
    if solver == "sde" and rng is None:
        raise ValueError("the sde solver needs an rng")
    impose = ((lambda x: x) if frame_mask is None else (lambda x: replace_frames(x, clean, frame_mask)))
    ts = timestep_grid(num_steps, shift)
    batch = noise.shape[0]
    x = impose(noise)
    steps = range(num_steps)
    if progress:
        steps = tqdm(steps, desc=progress if isinstance(progress, str) else "sample", leave=False)
    for i in steps:
        t, t_next = float(ts[i]), float(ts[i + 1])
        dt = t_next - t
        t_vec = jnp.full((batch,), t, jnp.float32)
        v = velocity_fn(x, t_vec)
        if solver == "euler":
            x = x + dt * v
        elif solver == "heun":
            x_euler = impose(x + dt * v)
            v_next = velocity_fn(x_euler, jnp.full((batch,), t_next, jnp.float32))
            x = x + dt * 0.5 * (v + v_next)
        else:
            if i == num_steps - 1:
                x = x + dt * v   # deterministic last step: no noise left to inject at t = 1
            else:
                drift = v - 0.5 * noise_scale * (x - t * v)
                z = _normal(rng, i, x.shape, x.dtype)
                x = x + dt * drift + np.sqrt(noise_scale * (1.0 - t) * dt) * z
        x = impose(x)
    return x


def _normal(rng: jax.Array, step: int, shape, dtype) -> jnp.ndarray:
    if rng.ndim == 0:
        return jax.random.normal(jax.random.fold_in(rng, step), shape, dtype)
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape[1:], dtype))(rng)
