"""Rotary position embeddings from explicit positions: 1D (temporal), 2D (spatial), 3D (full attention).

Positions are floats, so interpolation (the STIV paper's RoPE interpolation) is a multiplication: a model trained
on a 16x16 token grid runs on 32x32 with ``scale = 16 / 32``, which maps the new grid onto the old range.
MaskDiT passes the original grid positions of the kept tokens.
"""
from __future__ import annotations

import jax.numpy as jnp


def interpolation_scale(trained_size: int, new_size: int) -> float:
    """Position multiplier that maps ``new_size`` positions onto the ``trained_size`` range (e.g. 0.5 for 2x)."""
    return trained_size / new_size


def grid_positions(frames: int, height: int, width: int, *, spatial_scale: float = 1.0,
                   temporal_scale: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Token positions of a ``frames x height x width`` token grid.

    Returns:
      ``(temporal [frames], spatial [height * width, 2])``: frame index and (row, col), each scaled, float32.
    """
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                              indexing="ij")
    spatial = jnp.stack([rows.reshape(-1), cols.reshape(-1)], axis=-1) * spatial_scale
    temporal = jnp.arange(frames, dtype=jnp.float32) * temporal_scale
    return temporal, spatial


def rope_angles(positions: jnp.ndarray, dim: int, theta: float) -> jnp.ndarray:
    """Rotation angles ``[..., dim // 2]`` for scalar ``positions`` ``[...]`` over a ``dim``-wide slice."""
    inv_freq = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    return positions.astype(jnp.float32)[..., None] * inv_freq


def rope_1d(positions: jnp.ndarray, head_dim: int, theta: float) -> jnp.ndarray:
    """Angles ``[..., head_dim // 2]`` for 1D ``positions`` ``[...]`` (temporal attention)."""
    return rope_angles(positions, head_dim, theta)


def rope_2d(positions: jnp.ndarray, head_dim: int, theta: float) -> jnp.ndarray:
    """Angles ``[..., head_dim // 2]`` for (row, col) ``positions`` ``[..., 2]``.

    The first half of each head rotates by the row, the second half by the column (Unified-IO 2 convention).
    """
    half = head_dim // 2
    return jnp.concatenate([rope_angles(positions[..., 0], half, theta),
                            rope_angles(positions[..., 1], half, theta)], axis=-1)


def rope_3d(positions: jnp.ndarray, head_dim: int, theta: float) -> jnp.ndarray:
    """Angles ``[..., head_dim // 2]`` for (frame, row, col) ``positions`` ``[..., 3]`` (full 3D attention).

    Rows and columns get ``2 * (head_dim // 6)`` channels each; the frame index gets the rest.
    """
    spatial = 2 * (head_dim // 6)
    temporal = head_dim - 2 * spatial
    return jnp.concatenate([rope_angles(positions[..., 0], temporal, theta),
                            rope_angles(positions[..., 1], spatial, theta),
                            rope_angles(positions[..., 2], spatial, theta)], axis=-1)


def apply_rotary(x: jnp.ndarray, angles: jnp.ndarray) -> jnp.ndarray:
    """Rotates channel pairs ``(x[2i], x[2i+1])`` of ``x`` by ``angles`` (computed in float32).

    Args:
      x: queries or keys, ``[batch, length, heads, head_dim]``.
      angles: ``[batch or 1, length, head_dim // 2]``.
    """
    cos = jnp.cos(angles)[..., None, :]
    sin = jnp.sin(angles)[..., None, :]
    x32 = x.astype(jnp.float32)
    even, odd = x32[..., 0::2], x32[..., 1::2]
    rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)
