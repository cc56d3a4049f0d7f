"""ODE samplers integrating the learned velocity from t = 0 (noise) to t = 1 (data)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

VelocityFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def euler_sample(velocity_fn: VelocityFn, noise: jnp.ndarray, *, num_steps: int) -> jnp.ndarray:
    """Euler integration of ``dx/dt = velocity_fn(x, t)`` on a uniform grid.

    Args:
      velocity_fn: ``(x [batch, ...], t [batch]) -> velocity [batch, ...]``.
      noise: starting point at t = 0, ``[batch, ...]``.
      num_steps: number of Euler steps.
    """
    ts = jnp.linspace(0.0, 1.0, num_steps + 1)

    def step(x, i):
        t = jnp.full((x.shape[0],), ts[i])
        return x + (ts[i + 1] - ts[i]) * velocity_fn(x, t), None

    x, _ = jax.lax.scan(step, noise, jnp.arange(num_steps))
    return x
