"""CLIP text transformer (causal, pre-LN) in Linen, loading Hugging Face `CLIPTextModel`,
`CLIPTextModelWithProjection` and full `CLIPModel` (text tower + `text_projection`) safetensors.

Any width/depth: OpenAI CLIP-L (12 x 768 x 12, quick_gelu) up to the paper's bigG (32 layers x 1280 wide x 20 heads,
gelu). Outputs the final-layer-norm sequence `[batch, tokens, dim]` (or, with `hidden_layer=-2`, the penultimate
layer's output as SDXL conditions on) and the pooled embedding `[batch, dim]` (projected by `text_projection` when
the checkpoint has one).

Pooling follows transformers' `CLIPTextTransformer` exactly: legacy configs with `eos_token_id == 2` pool at
`argmax(ids)` (the highest id, which is CLIP's EOS 49407); others at the FIRST position holding `eos_token_id`
(position 0 when a row holds none). So an all-ones mask over EOS padding, as SD pipelines call it, pools at the
first EOS. `pool_token_id` overrides the id, for a tokenizer other than the checkpoint's own (the paper pairs a T5
tokenizer with CLIP).
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from stiv_jax.encoders import checkpoint_dir, layers, safetensors_loader
from stiv_jax.encoders.text_types import TextEmbeddings

_ACT = ("activation_batch", "activation_text_length", "activation_embed")
_CLIP_PROJECTION_DIM = 512  # transformers' CLIPConfig / CLIPTextConfig default projection_dim


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """A CLIP text tower: Hugging Face `CLIPTextConfig` field names AND defaults (openai/clip-vit-base-patch32).

    A `config.json` that omits a field gets the default transformers gives it. `CLIP_BIGG` below is the paper's.
    """

    vocab_size: int = 49408  # token embedding rows
    hidden_size: int = 512  # width
    intermediate_size: int = 2048  # MLP width
    num_hidden_layers: int = 12  # transformer layers
    num_attention_heads: int = 8  # heads; must divide hidden_size
    max_position_embeddings: int = 77  # learned positions = the longest input
    hidden_act: str = "quick_gelu"  # MLP activation (OpenAI CLIP: quick_gelu; OpenCLIP bigG / H: gelu)
    layer_norm_eps: float = 1e-5  # LayerNorm epsilon
    eos_token_id: int = 49407  # pooling position (see the module docstring); 2 selects the legacy argmax rule
    projection_dim: int | None = None  # text_projection width (WithProjection / CLIPModel); None: no projection

    def __post_init__(self):
        checkpoint_dir.require_divisible("CLIP text config", numerator=("hidden_size", self.hidden_size),
                                         denominator=("num_attention_heads", self.num_attention_heads))
        layers.activation(self.hidden_act)
        if not isinstance(self.eos_token_id, int):
            raise ValueError(f"eos_token_id={self.eos_token_id!r}: CLIP pools at one EOS id; give a single int.")

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config.json", file_has_projection: bool | None = None
                  ) -> "CLIPTextConfig":
        """Reads a `CLIPTextConfig` or full `CLIPConfig` JSON object as transformers does.

        A full CLIPModel config nests the tower in `text_config` (legacy files: `text_config_dict`, which wins) and
        keeps `projection_dim` at the top level. `architectures` decides whether there is a projection
        (`CLIPTextModel`: no; `CLIPTextModelWithProjection` / `CLIPModel`: yes); without it, `file_has_projection`.
        """
        architectures = raw.get("architectures") or []
        full = raw.get("model_type") == "clip" or "text_config" in raw or "text_config_dict" in raw
        text = dict(raw.get("text_config") or {}) if full else raw
        if full:
            text.update(raw.get("text_config_dict") or {})
        if full or "CLIPTextModelWithProjection" in architectures:
            projection = (raw if full else text).get("projection_dim") or _CLIP_PROJECTION_DIM
        elif "CLIPTextModel" in architectures or not file_has_projection:
            projection = None
        else:
            projection = text.get("projection_dim") or _CLIP_PROJECTION_DIM
        try:
            kwargs = checkpoint_dir.config_kwargs(cls, text, source=source)
            kwargs["projection_dim"] = projection
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}{' (text_config)' if full else ''}: {e}") from e

    @classmethod
    def from_json(cls, path: str) -> "CLIPTextConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f), source=path)


# The paper's text encoder: OpenCLIP ViT-bigG/14's text tower (SDXL's text_encoder_2).
CLIP_BIGG = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                           hidden_act="gelu", projection_dim=1280)


def pooling_positions(ids: jax.Array, eos_token_id: int, *, legacy: bool) -> jax.Array:
    """transformers' CLIP pooling index `[batch]`: `argmax(ids)` (legacy) or the first `eos_token_id`."""
    if legacy:
        return jnp.argmax(ids.astype(jnp.int32), axis=-1)
    return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)


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

    keep: int = -1  # also return transformers' `hidden_states[keep]` (0: embeddings, i: after layer i)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x `[batch, tokens, dim]` -> (last layer's output, hidden state `keep`), both `[batch, tokens, dim]`."""
        kept = x
        for i in range(self.config.num_hidden_layers):
            x = CLIPEncoderLayer(self.config, self.dtype, name=f"layers_{i}")(x, mask)
            kept = x if i + 1 == self.keep else kept
        return x, x if self.keep < 0 else kept


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
    """CLIP text tower. `__call__(ids [batch, tokens] int32, mask [batch, tokens] bool) -> TextEmbeddings`.

    Attributes:
      hidden_layer: None: the sequence is the final-layer-norm output (transformers' `last_hidden_state`); an int
        picks transformers' `hidden_states[hidden_layer]` instead (no final norm; -2 = penultimate layer, the SDXL
        convention). The pooled output is the same either way.
      pool_token_id: pool at the first position of this id instead of the config's rule.
    """

    config: CLIPTextConfig
    dtype: jnp.dtype = jnp.float32
    hidden_layer: int | None = None
    pool_token_id: int | None = None

    def __post_init__(self):
        depth = self.config.num_hidden_layers
        if self.hidden_layer is not None and not -depth - 1 <= self.hidden_layer <= depth:
            raise ValueError(f"hidden_layer={self.hidden_layer} is outside the {depth + 1} hidden states of this "
                             f"{depth}-layer CLIP (valid: {-depth - 1}..{depth}; -2 = penultimate).")
        super().__post_init__()

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
        keep = -1 if self.hidden_layer is None else self.hidden_layer % (c.num_hidden_layers + 1)
        x, hidden = CLIPEncoder(c, self.dtype, keep=keep, name="encoder")(x, attn_mask)
        x = layers.layer_norm(c.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(x)
        if self.pool_token_id is None:
            index = pooling_positions(ids, c.eos_token_id, legacy=c.eos_token_id == 2)
        else:
            index = pooling_positions(ids, self.pool_token_id, legacy=False)
        pooled = jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
        if c.projection_dim is not None:
            pooled = layers.dense(c.projection_dim, ("embed", "embed_out"), use_bias=False, dtype=self.dtype,
                                  name="text_projection")(pooled)
        sequence = x if self.hidden_layer is None else hidden
        return TextEmbeddings(sequence=sequence, mask=mask, pooled=pooled)


def load_clip_text(path: str, *, dtype=jnp.float32, hidden_layer: int | None = None
                   ) -> tuple[CLIPTextTransformer, dict]:
    """Builds the text tower from the checkpoint's `config.json` and loads its safetensors (or sharded index).

    `path`: a directory as `CLIPTextModel[WithProjection].save_pretrained` or `CLIPModel.save_pretrained` writes it
    (vision tower skipped), one of its `.safetensors` files, or a Hugging Face cache repository
    (`checkpoint_dir.resolve`). `hidden_layer`: see `CLIPTextTransformer`.
    Returns `(module, params)` with params a plain nested dict of float32 numpy arrays.
    """
    directory, file = checkpoint_dir.resolve(path)
    raw = checkpoint_dir.read_config(directory, loader="clip", accepted=("clip", "clip_text_model"),
                                     config_setting="config.text.path")
    files = safetensors_loader.safetensors_files(file or directory, default_name="model.safetensors")
    has_projection = "text_projection.weight" in safetensors_loader.checkpoint_keys(files)
    config = CLIPTextConfig.from_dict(raw, source=os.path.join(directory, "config.json"),
                                      file_has_projection=has_projection)
    model = CLIPTextTransformer(config, dtype=dtype, hidden_layer=hidden_layer)
    ids = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids, jnp.ones((1, 2), bool))["params"]
    ignore = [r"^embeddings\.position_ids$", r"^vision_model\.", r"^visual_projection\.", r"^logit_scale$"]
    if config.projection_dim is None:
        ignore.append(r"^text_projection\.")  # a CLIPTextModel config over a file with one: transformers skips it
    params = safetensors_loader.convert_state_dict(
        safetensors_loader.read_state_dict(files), abstract, source=file or directory, key_prefix="text_model.",
        ignore_unexpected=ignore, unprefixed_modules=("text_projection",))
    return model, params
