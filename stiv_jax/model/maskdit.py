"""MaskDiT token dropping: one random set of spatial positions per sample, shared by every frame.

The kept tokens stay in a random order: attention is order-free and RoPE gets each kept token's original grid
position, so the order carries no information (and tests catch any position bookkeeping error).
The loss code can rebuild the same mask from the same rng with ``keep_mask``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_kept(num_spatial: int, ratio: float) -> int:
    """Spatial tokens kept per frame when ``ratio`` of ``num_spatial`` are masked (at least one)."""
    return max(1, int(round(num_spatial * (1.0 - ratio))))


def sample_keep_indices(rng: jax.Array, *, batch: int, num_spatial: int, ratio: float) -> jnp.ndarray:
    """``[batch, num_kept]`` int32 spatial token indices kept for each sample, in random order."""
    order = jnp.argsort(jax.random.uniform(rng, (batch, num_spatial)), axis=-1)
    return order[:, : num_kept(num_spatial, ratio)].astype(jnp.int32)


def keep_mask(rng: jax.Array, *, batch: int, grid_hw: tuple[int, int], ratio: float) -> jnp.ndarray:
    """``[batch, grid_h, grid_w]`` bool, True where the DiT called with ``mask_rng=rng`` keeps the token.

    ``grid_hw`` is the token grid (latent height and width divided by the patch size).
    """
    num_spatial = grid_hw[0] * grid_hw[1]
    keep = sample_keep_indices(rng, batch=batch, num_spatial=num_spatial, ratio=ratio)
    mask = jnp.zeros((batch, num_spatial), bool).at[jnp.arange(batch)[:, None], keep].set(True)
    return mask.reshape(batch, *grid_hw)


def gather_tokens(tokens: jnp.ndarray, keep: jnp.ndarray) -> jnp.ndarray:
    """``[batch, t, s, width]`` -> kept tokens ``[batch, t, k, width]`` (the same positions in every frame)."""
    return jnp.take_along_axis(tokens, keep[:, None, :, None], axis=2)


def gather_positions(positions: jnp.ndarray, keep: jnp.ndarray) -> jnp.ndarray:
    """Spatial positions ``[s, 2]`` -> the kept tokens' original positions ``[batch, k, 2]``."""
    return positions[keep]


def unmask_tokens(kept: jnp.ndarray, keep: jnp.ndarray, mask_token: jnp.ndarray, num_spatial: int) -> jnp.ndarray:
    """Puts kept tokens ``[batch, t, k, width]`` back on the full grid ``[batch, t, s, width]``.

    Dropped positions get the learnable ``mask_token`` ``[width]``.
    """
    b, t, _, d = kept.shape
    full = jnp.broadcast_to(mask_token.astype(kept.dtype), (b, t, num_spatial, d))
    return jax.vmap(lambda f, k, x: f.at[:, k].set(x))(full, keep, kept)
