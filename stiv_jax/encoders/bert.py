"""BERT encoder (post-LN) in Linen, loading Hugging Face `BertModel` safetensors (e.g. all-MiniLM-L6-v2).

Outputs the last hidden state `[batch, tokens, hidden]` and, as sentence-transformers does for MiniLM, the mean over
real tokens as the pooled vector (the checkpoint's `pooler.*` CLS head is not used and is skipped when loading).
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from stiv_jax.encoders import checkpoint_dir, layers, safetensors_loader
from stiv_jax.encoders.text_types import TextEmbeddings, masked_mean

_ACT = ("activation_batch", "activation_text_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """A BERT encoder: Hugging Face `BertConfig` field names AND defaults (bert-base-uncased's shape).

    A `config.json` that omits a field gets the default transformers gives it. `MINILM_L6` below is the demo's.
    """

    vocab_size: int = 30522  # token embedding rows
    hidden_size: int = 768  # width
    num_hidden_layers: int = 12  # transformer layers
    num_attention_heads: int = 12  # heads; must divide hidden_size
    intermediate_size: int = 3072  # feed-forward width
    hidden_act: str = "gelu"  # feed-forward activation
    max_position_embeddings: int = 512  # learned positions = the longest input
    type_vocab_size: int = 2  # token-type (segment) embedding rows; we use type 0
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon

    def __post_init__(self):
        checkpoint_dir.require_divisible("BERT config", numerator=("hidden_size", self.hidden_size),
                                         denominator=("num_attention_heads", self.num_attention_heads))
        layers.activation(self.hidden_act)

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config.json") -> "BertConfig":
        """Reads a transformers `config.json` object (omitted fields take transformers' defaults)."""
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{source}: position_embedding_type={raw['position_embedding_type']!r} is not "
                             "supported (only 'absolute').")
        try:
            return cls(**checkpoint_dir.config_kwargs(cls, raw, source=source))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def from_json(cls, path: str) -> "BertConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f), source=path)


# sentence-transformers/all-MiniLM-L6-v2, the demo's text encoder.
MINILM_L6 = BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        head_dim = c.hidden_size // c.num_attention_heads
        split = lambda t: t.reshape(t.shape[:2] + (c.num_attention_heads, head_dim))
        q = split(layers.dense(c.hidden_size, ("embed", "heads"), dtype=self.dtype, name="query")(x))
        k = split(layers.dense(c.hidden_size, ("embed", "heads"), dtype=self.dtype, name="key")(x))
        v = split(layers.dense(c.hidden_size, ("embed", "heads"), dtype=self.dtype, name="value")(x))
        probs = layers.attention_weights(q, k, mask=mask, scale=head_dim**-0.5)
        return layers.attend(probs, v).reshape(x.shape[:2] + (c.hidden_size,))


class BertResidualOutput(nn.Module):
    """`LayerNorm(dense(h) + residual)`, Hugging Face's BertSelfOutput / BertOutput."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32
    input_names: tuple[str, str] = ("heads", "embed")

    @nn.compact
    def __call__(self, h: jax.Array, residual: jax.Array) -> jax.Array:
        h = layers.dense(self.config.hidden_size, self.input_names, dtype=self.dtype, name="dense")(h)
        return layers.layer_norm(self.config.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(h + residual)


class BertAttention(nn.Module):
    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        h = BertSelfAttention(self.config, self.dtype, name="self")(x, mask)
        return BertResidualOutput(self.config, self.dtype, name="output")(h, x)


class BertIntermediate(nn.Module):
    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = layers.dense(self.config.intermediate_size, ("embed", "mlp"), dtype=self.dtype, name="dense")(x)
        return layers.activation(self.config.hidden_act)(h)


class BertLayer(nn.Module):
    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        x = BertAttention(self.config, self.dtype, name="attention")(x, mask)
        h = BertIntermediate(self.config, self.dtype, name="intermediate")(x)
        x = BertResidualOutput(self.config, self.dtype, ("mlp", "embed"), name="output")(h, x)
        return nn.with_logical_constraint(x, _ACT)


class BertEncoderStack(nn.Module):
    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, mask):
        for i in range(self.config.num_hidden_layers):
            x = BertLayer(self.config, self.dtype, name=f"layer_{i}")(x, mask)
        return x


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        c = self.config
        words = layers.embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="word_embeddings")(ids)
        positions = layers.embed(c.max_position_embeddings, c.hidden_size, ("text_positions", "embed"),
                                 dtype=self.dtype, name="position_embeddings")(jnp.arange(ids.shape[1]))
        token_types = layers.embed(c.type_vocab_size, c.hidden_size, ("token_types", "embed"), dtype=self.dtype,
                                   name="token_type_embeddings")(jnp.zeros_like(ids))
        x = words + positions[None] + token_types
        return layers.layer_norm(c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x)


class BertEncoder(nn.Module):
    """BERT. `__call__(ids [batch, tokens] int32, mask [batch, tokens] bool) -> TextEmbeddings` (mean pooled)."""

    config: BertConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> TextEmbeddings:
        if ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"{ids.shape[1]} tokens exceed BERT's max_position_embeddings="
                             f"{self.config.max_position_embeddings}; lower text.max_length.")
        mask = mask.astype(bool)
        x = BertEmbeddings(self.config, self.dtype, name="embeddings")(ids)
        x = nn.with_logical_constraint(x, _ACT)
        x = BertEncoderStack(self.config, self.dtype, name="encoder")(x, mask[:, None, None, :])
        return TextEmbeddings(sequence=x, mask=mask, pooled=masked_mean(x, mask))


def load_bert(path: str, *, dtype=jnp.float32) -> tuple[BertEncoder, dict]:
    """Builds the model from the checkpoint's `config.json` and loads its safetensors (`BertModel` layout, or
    `BertFor*` with the `bert.` prefix). `path`: a directory, a `.safetensors` file in one, or a Hugging Face cache
    repository (`checkpoint_dir.resolve`)."""
    directory, file = checkpoint_dir.resolve(path)
    raw = checkpoint_dir.read_config(directory, loader="bert", accepted=("bert",), config_setting="config.text.path")
    config = BertConfig.from_dict(raw, source=os.path.join(directory, "config.json"))
    model = BertEncoder(config, dtype=dtype)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32),
                              jnp.ones((1, 2), bool))["params"]
    params = safetensors_loader.load_params(
        file or directory, abstract, key_prefix="bert.",
        ignore_unexpected=[r"^pooler\.", r"^embeddings\.position_ids$", r"^cls\.", r"^classifier\.", r"^qa_outputs\."])
    return model, params
