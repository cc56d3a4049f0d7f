"""T5 encoder (v1.0 ReLU and v1.1 gated-GELU) in Linen, loading Hugging Face `T5EncoderModel` safetensors.

Pre-RMS-norm blocks, unscaled dot-product attention with a learned bidirectional relative-position bias (bucketed,
computed in block 0 and shared by all blocks), no absolute positions. Any size up to XXL (24 x 4096, 64 heads x 64).
Outputs the final-norm sequence `[batch, tokens, d_model]` and, since T5 has no pooled token, the mean over real tokens.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from stiv_jax.encoders import checkpoint_dir, layers, safetensors_loader
from stiv_jax.encoders.text_types import TextEmbeddings, masked_mean
from stiv_jax.model.layers import RMSNorm

_ACT = ("activation_batch", "activation_text_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture of a T5 encoder: Hugging Face `T5Config` field names AND defaults (t5-small's shape, v1.0 ReLU).

    A `config.json` that omits a field gets the default transformers gives it; `model_type: "mt5"` configs get
    `MT5Config`'s defaults instead (`_MT5_DEFAULTS`). `T5_XXL` below is the paper-scale v1.1 encoder.
    """

    vocab_size: int = 32128  # token embedding rows (`shared.weight`)
    d_model: int = 512  # width
    d_kv: int = 64  # width of one attention head (need not divide d_model)
    d_ff: int = 2048  # feed-forward width
    num_layers: int = 6  # encoder blocks
    num_heads: int = 8  # attention heads
    relative_attention_num_buckets: int = 32  # relative-position buckets (both directions together)
    relative_attention_max_distance: int = 128  # distance beyond which offsets share the last bucket
    layer_norm_epsilon: float = 1e-6  # RMS-norm epsilon
    feed_forward_proj: str = "relu"  # "ACT" (v1.0: wi -> ACT -> wo) or "gated-ACT" (v1.1: ACT(wi_0) * wi_1 -> wo)

    def __post_init__(self):
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r} is not 'ACT' or 'gated-ACT' "
                             "(e.g. 'relu', 'gated-gelu'); fix the field in config.json.")
        layers.activation(self.activation_name)  # an unknown activation fails here, naming it

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config.json") -> "T5Config":
        """Reads a transformers `config.json` object (omitted fields take transformers' defaults)."""
        kwargs = checkpoint_dir.config_kwargs(cls, raw, source=source,
                                              defaults=_MT5_DEFAULTS if raw.get("model_type") == "mt5" else None)
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def from_json(cls, path: str) -> "T5Config":
        with open(path) as f:
            return cls.from_dict(json.load(f), source=path)

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation_name(self) -> str:
        name = self.feed_forward_proj.split("-")[-1]
        # Hugging Face maps "gated-gelu" to the tanh approximation (T5 v1.1 was trained with it).
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else name


# transformers' MT5Config defaults where they differ from T5Config's (mT5-small, gated-gelu).
_MT5_DEFAULTS = dict(vocab_size=250112, d_ff=1024, num_layers=8, num_heads=6, feed_forward_proj="gated-gelu")
# The paper-scale encoder: T5 v1.1 XXL (google/t5-v1_1-xxl, as in FLUX / SD3's text_encoder_3).
T5_XXL = T5Config(d_model=4096, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")


def relative_position_buckets(query_length: int, key_length: int, *, num_buckets: int, max_distance: int
                              ) -> jax.Array:
    """Bidirectional T5 buckets `[query_length, key_length]` int32 for relative position `key - query`.

    Half the buckets per direction; the first half of those are exact offsets, the rest logarithmic up to
    `max_distance` (Raffel et al. 2020, and the Hugging Face implementation's float32 arithmetic).
    """
    relative = jnp.arange(key_length)[None, :] - jnp.arange(query_length)[:, None]
    half = num_buckets // 2
    buckets = (relative > 0).astype(jnp.int32) * half
    distance = jnp.abs(relative)
    max_exact = half // 2
    is_small = distance < max_exact
    safe = jnp.maximum(distance, 1).astype(jnp.float32)
    large = max_exact + (jnp.log(safe / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, half - 1)
    return buckets + jnp.where(is_small, distance, large)


class T5Attention(nn.Module):
    config: T5Config
    has_relative_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, position_bias: jax.Array | None
                 ) -> tuple[jax.Array, jax.Array]:
        """x `[batch, tokens, d_model]`, mask `[batch, 1, 1, tokens]`; returns (out, bias `[1, heads, q, k]`)."""
        c = self.config
        inner = c.num_heads * c.d_kv
        split = lambda t: t.reshape(t.shape[:2] + (c.num_heads, c.d_kv))
        q = split(layers.dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="q")(x))
        k = split(layers.dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="k")(x))
        v = split(layers.dense(inner, ("embed", "heads"), use_bias=False, dtype=self.dtype, name="v")(x))
        if position_bias is None:
            if not self.has_relative_bias:
                raise ValueError("Only the first T5 block computes the relative position bias.")
            buckets = relative_position_buckets(x.shape[1], x.shape[1], num_buckets=c.relative_attention_num_buckets,
                                                max_distance=c.relative_attention_max_distance)
            table = layers.embed(c.relative_attention_num_buckets, c.num_heads, ("relpos_buckets", "heads"),
                                 name="relative_attention_bias")
            position_bias = jnp.transpose(table(buckets), (2, 0, 1))[None].astype(jnp.float32)
        probs = layers.attention_weights(q, k, bias=position_bias, mask=mask, scale=1.0)
        out = layers.attend(probs, v).reshape(x.shape[:2] + (inner,))
        return layers.dense(c.d_model, ("heads", "embed"), use_bias=False, dtype=self.dtype, name="o")(out), \
            position_bias


class T5SelfAttentionLayer(nn.Module):
    config: T5Config
    has_relative_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, position_bias):
        h = RMSNorm(eps=self.config.layer_norm_epsilon, dtype=self.dtype, scale_axis="norm", name="layer_norm")(x)
        h, position_bias = T5Attention(self.config, self.has_relative_bias, self.dtype, name="SelfAttention")(
            h, mask, position_bias)
        return x + h, position_bias


class T5DenseActDense(nn.Module):
    config: T5Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        act = layers.activation(c.activation_name)
        if c.is_gated:
            gate = act(layers.dense(c.d_ff, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="wi_0")(x))
            h = gate * layers.dense(c.d_ff, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="wi_1")(x)
        else:
            h = act(layers.dense(c.d_ff, ("embed", "mlp"), use_bias=False, dtype=self.dtype, name="wi")(x))
        return layers.dense(c.d_model, ("mlp", "embed"), use_bias=False, dtype=self.dtype, name="wo")(h)


class T5FeedForwardLayer(nn.Module):
    config: T5Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = RMSNorm(eps=self.config.layer_norm_epsilon, dtype=self.dtype, scale_axis="norm", name="layer_norm")(x)
        return x + T5DenseActDense(self.config, self.dtype, name="DenseReluDense")(h)


class T5Block(nn.Module):
    config: T5Config
    has_relative_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask, position_bias):
        x, position_bias = T5SelfAttentionLayer(self.config, self.has_relative_bias, self.dtype, name="layer_0")(
            x, mask, position_bias)
        x = T5FeedForwardLayer(self.config, self.dtype, name="layer_1")(x)
        return nn.with_logical_constraint(x, _ACT), position_bias


class T5Stack(nn.Module):
    config: T5Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        attn_mask = mask[:, None, None, :]
        position_bias = None
        for i in range(self.config.num_layers):
            x, position_bias = T5Block(self.config, i == 0, self.dtype, name=f"block_{i}")(x, attn_mask, position_bias)
        return RMSNorm(eps=self.config.layer_norm_epsilon, dtype=self.dtype, scale_axis="norm",
                       name="final_layer_norm")(x)


class T5Encoder(nn.Module):
    """T5 encoder. `__call__(ids [batch, tokens] int32, mask [batch, tokens] bool) -> TextEmbeddings`."""

    config: T5Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> TextEmbeddings:
        mask = mask.astype(bool)
        x = layers.embed(self.config.vocab_size, self.config.d_model, dtype=self.dtype, name="shared")(ids)
        x = nn.with_logical_constraint(x, _ACT)
        x = T5Stack(self.config, self.dtype, name="encoder")(x, mask)
        return TextEmbeddings(sequence=x, mask=mask, pooled=masked_mean(x, mask))


def load_t5_encoder(path: str, *, dtype=jnp.float32) -> tuple[T5Encoder, dict]:
    """Builds the model from the checkpoint's `config.json` and loads `T5EncoderModel` (or full T5) safetensors.

    `path`: a checkpoint directory, one of its `.safetensors` files, or a Hugging Face cache repository
    (`checkpoint_dir.resolve`). The encoder's input embedding is tied to `shared.weight`; files holding only
    `encoder.embed_tokens.weight` load as well. Decoder tensors of a full `T5ForConditionalGeneration` are ignored.
    """
    directory, file = checkpoint_dir.resolve(path)
    raw = checkpoint_dir.read_config(directory, loader="t5", accepted=("t5", "mt5"), config_setting="config.text.path")
    source = os.path.join(directory, "config.json")
    config = T5Config.from_dict(raw, source=source)
    files = safetensors_loader.safetensors_files(file or directory, default_name="model.safetensors")
    keys = safetensors_loader.checkpoint_keys(files)
    gated_file = any(re.search(r"\.DenseReluDense\.wi_[01]\.", k) for k in keys)
    single_file = any(".DenseReluDense.wi.weight" in k for k in keys)
    if gated_file != single_file and gated_file != config.is_gated:
        raise ValueError(
            f"{source}: feed_forward_proj={config.feed_forward_proj!r}"
            f"{' (the transformers default: the field is absent)' if 'feed_forward_proj' not in raw else ''} builds a "
            f"{'gated (wi_0/wi_1)' if config.is_gated else 'single wi'} feed-forward, but {files[0]} holds "
            f"{'wi_0/wi_1' if gated_file else 'wi'}; set feed_forward_proj to "
            f"{'gated-gelu (T5 v1.1)' if gated_file else 'relu (T5 v1.0)'} in config.json.")
    model = T5Encoder(config, dtype=dtype)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                              jnp.ones((1, 2), bool))["params"]
    state = safetensors_loader.read_state_dict(files)
    params = safetensors_loader.convert_state_dict(
        state, abstract, source=file or directory, aliases={"encoder.embed_tokens.weight": "shared.weight"},
        ignore_unexpected=[r"^decoder\.", r"^lm_head\."], literal_names=("wi_0", "wi_1"))
    return model, params
