"""Building blocks of the STIV DiT: stateless norms, attention with QK-norm and RoPE, FFN, modulation."""
from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax.ad_checkpoint import checkpoint_name

from stiv_jax.model.attention_kernels import attention
from stiv_jax.model.config import DiTConfig
from stiv_jax.model.rope import apply_rotary
from stiv_jax.parallel.mesh import shard_logical

# Logical axis names of a video token tensor ``[batch, frames, tokens, embed]``.
TOKENS = ("activation_batch", "activation_frames", "activation_length", "activation_embed")


def stateless_layer_norm(x: jnp.ndarray, eps: float = 1e-6) -> jnp.ndarray:
    """LayerNorm without scale or bias, computed in float32 (AXLearn ``LayerNormStateless``)."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: jnp.ndarray, shift: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """AdaLN modulation ``x * (1 + scale) + shift``; ``shift``/``scale`` ``[batch, width]`` broadcast over tokens."""
    expand = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
    return x * (1 + scale[expand]) + shift[expand]


class Linear(nn.Module):
    """Linear map contracting the trailing ``len(axis)`` input dims into ``features`` (a tuple for several).

    The kernel is created at its full ``[*in_dims, *features]`` shape with logical names ``axes``, so it is
    sharded at creation (``nn.DenseGeneral`` creates a flat kernel, which breaks multi-dim annotations).

    LoRA: when ``config.lora_rank > 0`` and ``config.lora_targets`` matches this module's path, the output gains
    ``(alpha / r) * (dropout(x) A) B`` with ``lora_a`` ``[prod(in_dims), r]`` (names ``('lora_features',
    'lora_rank')``) and ``lora_b`` ``[r, prod(features)]`` (``('lora_rank', 'lora_features')``): each factor is
    stored flat so that its wide side shards over the weight axes (``lora_features`` maps like ``embed``) even
    where the kernel's side is ``heads x head_dim`` or ``mlp``, which FSDP leaves whole.
    ``lora_b`` starts at zero: at init the output is exactly the base layer's.
    """

    features: tuple[int, ...]
    axes: tuple[str | None, ...]
    config: DiTConfig
    num_in_dims: int = 1
    zero_init: bool = False
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[x.ndim - self.num_in_dims:]
        init = nn.initializers.zeros_init() if self.zero_init else nn.initializers.variance_scaling(
            1.0, "fan_avg", "uniform", in_axis=tuple(range(self.num_in_dims)),
            out_axis=tuple(range(self.num_in_dims, self.num_in_dims + len(self.features))))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes),
                            tuple(in_shape) + tuple(self.features), self.config.weight_dtype)
        dtype = self.config.compute_dtype
        contract = (tuple(range(x.ndim - self.num_in_dims, x.ndim)), tuple(range(self.num_in_dims)))
        y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (contract, ((), ())))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   self.axes[self.num_in_dims:]),
                              tuple(self.features), self.config.weight_dtype)
            y = y + bias.astype(dtype)
        if self.config.lora_rank and re.search(self.config.lora_targets, "/".join(self.scope.path)):
            y = y + self._lora(x, in_shape, contract)
        return y

    def _lora(self, x, in_shape, contract):
        """The low-rank update ``(alpha / r) * (dropout(x) A) B`` of this projection."""
        cfg, rank = self.config, self.config.lora_rank
        a_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=tuple(range(self.num_in_dims)),
                                                  out_axis=(self.num_in_dims,))
        flat_in, flat_out = math.prod(in_shape), math.prod(self.features)
        init_a = lambda key, shape, dtype: a_init(key, tuple(in_shape) + (rank,), dtype).reshape(shape)  # noqa: E731
        lora_a = self.param("lora_a", nn.with_logical_partitioning(init_a, ("lora_features", "lora_rank")),
                            (flat_in, rank), cfg.weight_dtype).reshape(tuple(in_shape) + (rank,))
        lora_b = self.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                   ("lora_rank", "lora_features")),
                            (rank, flat_out), cfg.weight_dtype).reshape((rank,) + tuple(self.features))
        if cfg.lora_dropout and self.has_rng("dropout"):   # training only: the train step passes the rng
            keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - cfg.lora_dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - cfg.lora_dropout), 0).astype(x.dtype)
        dtype = cfg.compute_dtype
        h = jax.lax.dot_general(x.astype(dtype), lora_a.astype(dtype), (contract, ((), ())))
        y = jax.lax.dot_general(h, lora_b.astype(dtype), (((h.ndim - 1,), (0,)), ((), ())))
        return y * jnp.asarray(cfg.lora_alpha / rank, dtype)


def dense(features, *, axes, config: DiTConfig, name: str, zero_init: bool = False, axis=-1):
    """A ``Linear`` over the trailing input dims ``axis`` (an int or tuple of negative ints)."""
    features = features if isinstance(features, tuple) else (features,)
    num_in = len(axis) if isinstance(axis, tuple) else 1
    return Linear(features, tuple(axes), config, num_in_dims=num_in, zero_init=zero_init, name=name)


class RMSNorm(nn.Module):
    """RMS norm over the last axis, ``x / sqrt(mean(x^2) + eps) * scale`` in float32 (no mean subtraction, no bias):
    the DiT's per-head QK-norm and T5's layer norm."""

    eps: float = 1e-6
    dtype: jnp.dtype | None = None       # output dtype; None keeps the input's
    param_dtype: jnp.dtype = jnp.float32
    scale_axis: str = "head_dim"         # logical axis name of ``scale`` (T5: "norm")

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.scale_axis,)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (x32 * scale).astype(self.dtype or x.dtype)


class Attention(nn.Module):
    """Multi-head attention with optional QK RMSNorm and RoPE.

    Queries come from ``x`` ``[batch, q_len, width]``; keys and values from ``context``
    ``[batch, kv_len, context_dim]`` (self-attention when None). ``angles`` ``[batch or 1, q_len, head_dim // 2]``
    rotate queries and keys (self-attention only). The attention output before the output projection is tagged
    ``remat_name`` for named remat policies.
    """

    config: DiTConfig
    qk_norm: bool = True
    causal: bool = False
    zero_init_out: bool = False
    remat_name: str | None = None
    length_axis: str = "activation_length"   # logical name of q_len (frames for temporal attention)
    batch_axis: str = "activation_batch"     # logical name of batch (batch x tokens for temporal attention)

    @nn.compact
    def __call__(self, x, *, context=None, kv_mask=None, angles=None, context_repeat: int = 1):
        """``context_repeat``: each ``context`` row (and ``kv_mask`` row) serves that many consecutive query rows
        (cross-attention of ``[batch * frames, tokens, width]`` queries to ``[batch, text_len, width]`` text)."""
        cfg = self.config
        self_attention = context is None
        context = x if self_attention else context
        heads = (cfg.num_heads, cfg.head_dim)
        q = dense(heads, axes=("embed", "heads", "head_dim"), config=cfg, name="query")(x)
        k = dense(heads, axes=("embed", "heads", "head_dim"), config=cfg, name="key")(context)
        v = dense(heads, axes=("embed", "heads", "head_dim"), config=cfg, name="value")(context)
        if context_repeat > 1:
            k, v = jnp.repeat(k, context_repeat, axis=0), jnp.repeat(v, context_repeat, axis=0)
            kv_mask = None if kv_mask is None else jnp.repeat(kv_mask, context_repeat, axis=0)
        q_names = (self.batch_axis, self.length_axis, "activation_heads", None)
        kv_names = q_names if self_attention else (self.batch_axis, "activation_text_length",
                                                   "activation_heads", None)
        q, k, v = shard_logical(q, q_names), shard_logical(k, kv_names), shard_logical(v, kv_names)
        if self.qk_norm:
            q = RMSNorm(eps=cfg.norm_eps, param_dtype=cfg.weight_dtype, name="query_norm")(q)
            k = RMSNorm(eps=cfg.norm_eps, param_dtype=cfg.weight_dtype, name="key_norm")(k)
        if angles is not None:
            q, k = apply_rotary(q, angles), apply_rotary(k, angles)
        # Initialisation only needs shapes: use XLA there, so a splash config initialises on any host (AOT).
        kernel_config = (dataclasses.replace(cfg, attention_impl="xla", context_attention="gspmd")
                         if self.is_initializing() else cfg)
        out = attention(q, k, v, kv_mask=kv_mask, causal=self.causal, config=kernel_config,
                        length_name=self.length_axis if self_attention else None, batch_name=self.batch_axis)
        out = shard_logical(out, q_names)
        if self.remat_name:
            out = checkpoint_name(out, self.remat_name)
        return dense(cfg.width, axes=("heads", "head_dim", "embed"), config=cfg, axis=(-2, -1),
                     name="out", zero_init=self.zero_init_out)(out)


class FeedForward(nn.Module):
    """Two-layer GELU MLP with hidden size ``mlp_ratio * width`` on ``[*token_names[:-1], width]`` inputs."""

    config: DiTConfig
    # Logical names of the input dims; the hidden activation keeps them with ``activation_mlp`` last, so tokens
    # sharded over ``context`` stay sharded through the (4x wider) hidden layer.
    token_names: tuple[str | None, ...] = ("activation_batch", "activation_frames", "activation_length",
                                           "activation_embed")

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = dense(cfg.mlp_dim, axes=("embed", "mlp"), config=cfg, name="wi")(x)
        h = shard_logical(nn.gelu(h), tuple(self.token_names[:-1]) + ("activation_mlp",))
        h = checkpoint_name(h, "ffn_hidden")
        return dense(cfg.width, axes=("mlp", "embed"), config=cfg, name="wo")(h)


def sinusoid(values: jnp.ndarray, dim: int = 256, max_period: float = 1e4) -> jnp.ndarray:
    """``[..., dim]`` sinusoidal embedding (``[cos, sin]`` order, AXLearn ``TimeStepEmbedding``) of ``values``."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = values.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
