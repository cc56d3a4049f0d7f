"""Rotary position embeddings from explicit positions: 1D (temporal) and 2D (spatial, Unified-IO 2 style)."""
from __future__ import annotations

import jax.numpy as jnp


def rope_angles(positions: jnp.ndarray, dim: int, theta: float) -> jnp.ndarray:
    """Rotation angles ``[..., dim // 2]`` for scalar ``positions`` ``[...]`` over a ``dim``-wide slice."""
    inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    return positions.astype(jnp.float32)[..., None] * inv_freq


def apply_rotary(x: jnp.ndarray, angles: jnp.ndarray) -> jnp.ndarray:
    """Rotates channel pairs ``(x[2i], x[2i+1])`` of ``x`` ``[..., length, heads, dim]`` by ``angles``.

    Args:
      x: queries or keys, ``[batch, length, heads, dim]``.
      angles: ``[batch or 1, length, dim // 2]``.
    """
    cos = jnp.cos(angles)[..., None, :]
    sin = jnp.sin(angles)[..., None, :]
    x32 = x.astype(jnp.float32)
    even, odd = x32[..., 0::2], x32[..., 1::2]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


def rope_1d(positions: jnp.ndarray, head_dim: int, theta: float) -> jnp.ndarray:
    """Angles ``[..., head_dim // 2]`` for 1D ``positions`` (temporal attention)."""
    return rope_angles(positions, head_dim, theta)


def rope_2d(rows: jnp.ndarray, cols: jnp.ndarray, head_dim: int, theta: float) -> jnp.ndarray:
    """Angles ``[..., head_dim // 2]``: the first half of the head rotates by row, the second by column."""
    half = head_dim // 2
    return jnp.concatenate([rope_angles(rows, half, theta), rope_angles(cols, half, theta)], axis=-1)
