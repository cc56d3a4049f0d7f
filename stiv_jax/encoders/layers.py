"""Small Linen building blocks shared by the text encoders and the VAE.

Every parameter is created through `nn.with_logical_partitioning`, so a model's params carry logical axis names
(`embed`, `mlp`, `heads`, `head_dim`, `vocab`, `norm`, ...) that the mesh rules in the config map to mesh axes.
Layer norms compute the variance as E[(x - mean)^2] (not E[x^2] - mean^2) to match PyTorch to fp32 rounding.
"""
from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LogicalNames = Sequence[str | None]

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: nn.gelu(x, approximate=False),  # erf GELU (torch.nn.GELU(), HF "gelu")
    "gelu_new": lambda x: nn.gelu(x, approximate=True),  # tanh GELU (HF "gelu_new" / "gelu_pytorch_tanh")
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI CLIP
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Returns the activation function called `name` in Hugging Face / diffusers configs."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}.")
    return _ACTIVATIONS[name]


def dense(features: int, names: LogicalNames, *, use_bias: bool = True, dtype=jnp.float32, name: str | None = None
          ) -> nn.Dense:
    """A Dense layer whose kernel `[in, out]` carries logical axis names `names` (bias takes `names[-1]`)."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
        kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), tuple(names)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (names[-1],)),
        name=name,
    )


def embed(num_embeddings: int, features: int, names: LogicalNames = ("vocab", "embed"), *, dtype=jnp.float32,
          name: str | None = None) -> nn.Embed:
    """A lookup table `[num_embeddings, features]` with logical axis names `names`."""
    return nn.Embed(
        num_embeddings,
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), tuple(names)),
        name=name,
    )


def layer_norm(epsilon: float, *, dtype=jnp.float32, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over the last axis with `scale`/`bias` named `norm`."""
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def group_norm(num_groups: int, epsilon: float, *, dtype=jnp.float32, name: str | None = None) -> nn.GroupNorm:
    """GroupNorm over `[..., height, width, channels]` with `scale`/`bias` named `norm`."""
    return nn.GroupNorm(
        num_groups=num_groups,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


def conv(features: int, kernel_size: int, *, strides: int = 1, padding="SAME", dtype=jnp.float32,
         name: str | None = None) -> nn.Conv:
    """A 2D convolution over `[batch, height, width, channels]`; kernel `[kh, kw, in, out]`."""
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), ("conv_height", "conv_width", "conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("conv_out",)),
        name=name,
    )


def attention_weights(query: jax.Array, key: jax.Array, *, bias: jax.Array | None = None,
                      mask: jax.Array | None = None, scale: float = 1.0) -> jax.Array:
    """Softmax attention probabilities.

    Args:
      query: `[batch, q_len, heads, head_dim]`.
      key: `[batch, k_len, heads, head_dim]`.
      bias: additive bias broadcastable to `[batch, heads, q_len, k_len]`.
      mask: bool, broadcastable to `[batch, heads, q_len, k_len]`; False positions get no weight.
      scale: multiplies the logits.
    Returns:
      `[batch, heads, q_len, k_len]` float32 probabilities.
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, precision=jax.lax.Precision.HIGHEST).astype(jnp.float32)
    logits = logits * scale
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1)


def attend(probs: jax.Array, value: jax.Array) -> jax.Array:
    """`[batch, heads, q_len, k_len]` x `[batch, k_len, heads, head_dim]` -> `[batch, q_len, heads, head_dim]`."""
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(value.dtype), value, precision=jax.lax.Precision.HIGHEST)
