"""A small trainable text encoder over UTF-8 bytes: the skeleton's text conditioning.

Real frozen encoders (CLIP, T5, BERT) share its interface: ``tokenize`` -> ``(ids, mask)`` and
``apply(params, ids, mask)`` -> ``(sequence [batch, len, dim], pooled [batch, dim])``.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

PAD_ID = 0
BYTE_OFFSET = 1  # id = byte value + 1; 0 is padding


def tokenize_bytes(texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte-level tokenization.

    Returns:
      ids ``[batch, max_length]`` int32 and mask ``[batch, max_length]`` bool (True for real tokens). The empty
      string (the null text of classifier-free guidance) gives an all-False mask.
    """
    ids = np.full((len(texts), max_length), PAD_ID, np.int32)
    for i, text in enumerate(texts):
        data = np.frombuffer(text.encode("utf-8")[:max_length], np.uint8).astype(np.int32) + BYTE_OFFSET
        ids[i, : len(data)] = data
    return ids, ids != PAD_ID


class TokenEmbeddingEncoder(nn.Module):
    """Trainable byte embedding + one transformer-free MLP mixer; pooled output is the masked mean."""

    dim: int = 128
    vocab_size: int = 256 + BYTE_OFFSET

    @nn.compact
    def __call__(self, ids: jnp.ndarray, mask: jnp.ndarray):
        """``ids``/``mask`` ``[batch, len]`` -> ``(sequence [batch, len, dim], pooled [batch, dim])``."""
        emb = nn.Embed(self.vocab_size, self.dim, name="embedding",
                       embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")))
        positions = self.param("positions", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                                         (None, "embed")), (ids.shape[1], self.dim))
        x = emb(ids) + positions[None]
        h = nn.Dense(self.dim, name="mix", kernel_init=nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), ("embed", "mlp")))(nn.gelu(x))
        x = (x + h) * mask[..., None]
        pooled = x.sum(1) / jnp.maximum(mask.sum(1, keepdims=True), 1)
        return x, pooled
