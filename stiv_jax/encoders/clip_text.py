"""CLIP text transformer (causal, pre-LN) in Linen, loading Hugging Face `CLIPTextModel` safetensors.

Any width/depth: OpenAI CLIP-L (12 x 768 x 12, quick_gelu) up to the paper's bigG (32 layers x 1280 wide x 20 heads,
gelu). Outputs the final-layer-norm sequence `[batch, tokens, dim]` and the pooled last-token embedding `[batch, dim]`
(projected by `text_projection` for `CLIPTextModelWithProjection` checkpoints).

Pooling: Hugging Face pools at the first EOS token (or `argmax(ids)` for legacy `eos_token_id == 2` configs). With
right padding and one EOS closing each caption that is the last real token, which is what we take from the mask; it
also makes the pooled output well defined for a non-CLIP tokenizer (the paper pairs a T5 tokenizer with CLIP).
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from stiv_jax.encoders import layers, safetensors_loader
from stiv_jax.encoders.text_types import TextEmbeddings, last_token

_ACT = ("activation_batch", "activation_text_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Architecture of a CLIP text tower (Hugging Face `CLIPTextConfig` field names)."""

    vocab_size: int = 49408
    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 20
    max_position_embeddings: int = 77
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: int | None = None  # set for CLIPTextModelWithProjection checkpoints

    @classmethod
    def from_json(cls, path: str) -> "CLIPTextConfig":
        with open(path) as f:
            raw = json.load(f)
        raw = raw.get("text_config", raw)  # a full CLIPModel config nests the text tower
        fields = {f.name for f in dataclasses.fields(cls)} - {"projection_dim"}
        kwargs = {k: raw[k] for k in fields if k in raw}
        if "CLIPTextModelWithProjection" in (raw.get("architectures") or []):
            kwargs["projection_dim"] = raw["projection_dim"]
        return cls(**kwargs)


class CLIPAttention(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """x `[batch, tokens, dim]`, mask `[batch, 1, tokens, tokens]` bool -> `[batch, tokens, dim]`."""
        c = self.config
        head_dim = c.hidden_size // c.num_attention_heads
        split = lambda t: t.reshape(t.shape[:2] + (c.num_attention_heads, head_dim))
        q = split(layers.dense(c.hidden_size, ("embed", "heads"), dtype=self.dtype, name="q_proj")(x))
        k = split(layers.dense(c.hidden_size, ("embed", "heads"), dtype=self.dtype, name="k_proj")(x))
        v = split(layers.dense(c.hidden_size, ("embed", "heads"), dtype=self.dtype, name="v_proj")(x))
        probs = layers.attention_weights(q, k, mask=mask, scale=head_dim**-0.5)
        out = layers.attend(probs, v).reshape(x.shape[:2] + (c.hidden_size,))
        return layers.dense(c.hidden_size, ("heads", "embed"), dtype=self.dtype, name="out_proj")(out)


class CLIPMLP(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        h = layers.dense(c.intermediate_size, ("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
        h = layers.activation(c.hidden_act)(h)
        return layers.dense(c.hidden_size, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        eps = self.config.layer_norm_eps
        h = layers.layer_norm(eps, dtype=self.dtype, name="layer_norm1")(x)
        x = x + CLIPAttention(self.config, self.dtype, name="self_attn")(h, mask)
        h = layers.layer_norm(eps, dtype=self.dtype, name="layer_norm2")(x)
        x = x + CLIPMLP(self.config, self.dtype, name="mlp")(h)
        return nn.with_logical_constraint(x, _ACT)


class CLIPEncoder(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        for i in range(self.config.num_hidden_layers):
            x = CLIPEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
        return x


class CLIPEmbeddings(nn.Module):
    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        c = self.config
        tokens = layers.embed(c.vocab_size, c.hidden_size, dtype=self.dtype, name="token_embedding")(ids)
        positions = layers.embed(c.max_position_embeddings, c.hidden_size, ("text_positions", "embed"),
                                 dtype=self.dtype, name="position_embedding")(jnp.arange(ids.shape[1]))
        return tokens + positions[None]


class CLIPTextTransformer(nn.Module):
    """CLIP text tower. `__call__(ids [batch, tokens] int32, mask [batch, tokens] bool) -> TextEmbeddings`."""

    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array, mask: jax.Array) -> TextEmbeddings:
        c = self.config
        if ids.shape[1] > c.max_position_embeddings:
            raise ValueError(f"{ids.shape[1]} tokens exceed the CLIP encoder's max_position_embeddings="
                             f"{c.max_position_embeddings}; lower text.max_length.")
        mask = mask.astype(bool)
        x = CLIPEmbeddings(c, self.dtype, name="embeddings")(ids)
        x = nn.with_logical_constraint(x, _ACT)
        length = ids.shape[1]
        causal = jnp.tril(jnp.ones((length, length), bool))
        attn_mask = causal[None, None] & mask[:, None, None, :]
        x = CLIPEncoder(c, self.dtype, name="encoder")(x, attn_mask)
        x = layers.layer_norm(c.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
        pooled = last_token(x, mask)
        if c.projection_dim is not None:
            pooled = layers.dense(c.projection_dim, ("embed", "embed_out"), use_bias=False, dtype=self.dtype,
                                  name="text_projection")(pooled)
        return TextEmbeddings(sequence=x, mask=mask, pooled=pooled)


def load_clip_text(path: str, *, dtype=jnp.float32) -> tuple[CLIPTextTransformer, dict]:
    """Builds the model from `path/config.json` and loads `path/model.safetensors` (or a sharded index).

    `path` is a local directory as written by `CLIPTextModel.save_pretrained` (or a full CLIPModel's text tower).
    Returns `(module, params)` with params a plain nested dict of float32 numpy arrays.
    """
    config = CLIPTextConfig.from_json(os.path.join(path, "config.json"))
    model = CLIPTextTransformer(config, dtype=dtype)
    ids = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids, jnp.ones((1, 2), bool))["params"]
    params = safetensors_loader.load_params(
        path, abstract, key_prefix="text_model.",
        ignore_unexpected=[r"^embeddings\.position_ids$", r"^vision_model\.", r"^visual_projection\.",
                           r"^logit_scale$"])
    return model, params
