"""The output every text encoder returns, and the shared mean pooling."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TextEmbeddings(NamedTuple):
    """What a text encoder hands to the diffusion model.

    Attributes:
      sequence: `[batch, tokens, dim]` float, per-token embeddings (cross-attention keys/values).
      mask: `[batch, tokens]` bool, True on real tokens, False on padding.
      pooled: `[batch, dim]` float, one vector per caption (added to the singleton condition).
    """

    sequence: jax.Array
    mask: jax.Array
    pooled: jax.Array


def masked_mean(sequence: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over real tokens, as sentence-transformers' mean pooling: `[b, t, d]`, `[b, t]` -> `[b, d]`."""
    weights = mask.astype(sequence.dtype)[..., None]
    total = jnp.sum(sequence * weights, axis=1)
    return total / jnp.clip(jnp.sum(weights, axis=1), 1e-9, None)

