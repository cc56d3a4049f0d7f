"""`build_text_encoder(config.text)`: one text-encoder interface over every kind the configs can name.

Config keys (`config.text`):
  kind        'token_embedding' (trainable byte encoder) | 'clip' | 't5' | 'bert' (pretrained, loaded from `path`)
  path        local directory holding `config.json` + `model.safetensors` (never a hub name); the form
              'package:MODULE/SUBDIR' points inside an installed Python package (the demo's MiniLM)
  tokenizer   ConfigDict(kind='' | 'bytes' | 'sentencepiece' | 'hf_json', path=''); kind '' is the encoder's own
              (bytes for token_embedding, spiece.model for t5, tokenizer.json otherwise); path '' is `text.path`.
              The paper's pairing is kind='clip' with tokenizer.kind='sentencepiece' (a T5 tokenizer).
  max_length  tokens per caption
  dim         width of the text embedding; checked against the loaded checkpoint
  frozen      pretrained encoders: stop gradients into their weights (the paper's CLIP is frozen)
  hidden_layer  (optional, clip only) which hidden state is the sequence: absent/None = final-norm output,
              -2 = penultimate layer (SDXL's convention); see `clip_text.CLIPTextTransformer`

`path` may be a checkpoint directory, one of its .safetensors files or a Hugging Face cache repository
(`.../hub/models--ORG--NAME[/SUBFOLDER]`); see `checkpoint_dir`. A CLIP encoder paired with another tokenizer
pools at that tokenizer's EOS id (CLIP's own EOS never occurs in its ids).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.encoders import bert, checkpoint_dir, clip_text, pretrained, t5, text_embedding, text_tokenizers
from stiv_jax.encoders.text_types import TextEmbeddings

_LOADERS: dict[str, Callable[[str], tuple[nn.Module, dict]]] = {
    "clip": clip_text.load_clip_text,
    "t5": t5.load_t5_encoder,
    "bert": bert.load_bert,
}
_OWN_TOKENIZER = {"token_embedding": "bytes", "clip": "hf_json", "t5": "sentencepiece", "bert": "hf_json"}
KINDS = tuple(_OWN_TOKENIZER)


@dataclasses.dataclass(frozen=True)
class TextEncoder:
    """A text encoder plus its tokenizer.

    `tokenize(texts, max_length=None) -> (ids [batch, len] int32, mask [batch, len] bool)`;
    `encode(params, ids, mask) -> TextEmbeddings`. It also offers Linen's `init`/`apply` so it can stand wherever
    a Linen text module is expected: `apply({'params': p}, ids, mask) -> (sequence, pooled)`.
    """

    kind: str
    module: nn.Module
    tokenizer: text_tokenizers.Tokenizer
    max_length: int
    dim: int
    frozen: bool
    pretrained_params: Any = None  # plain nested dict for pretrained kinds, None for trainable ones
    abstract: bool = False  # pretrained_params are ShapeDtypeStructs (fit check without the weight files)

    @functools.cached_property
    def frozen_params(self):
        """The checkpoint's params as device arrays (converted once), for use outside the trained state."""
        if self.pretrained_params is None:
            raise ValueError(f"text.kind={self.kind!r} is trainable and has no pretrained params.")
        return jax.tree.map(jnp.asarray, self.pretrained_params)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer(list(texts), max_length or self.max_length)

    def encode(self, params, ids: jax.Array, mask: jax.Array) -> TextEmbeddings:
        """ids/mask `[batch, len]` -> TextEmbeddings (sequence `[batch, len, dim]`, mask, pooled `[batch, dim]`)."""
        if self.frozen:
            params = jax.lax.stop_gradient(params)
        out = self.module.apply({"params": params}, ids, mask)
        if isinstance(out, TextEmbeddings):
            return out
        sequence, pooled = out  # the skeleton's TokenEmbeddingEncoder returns a pair
        return TextEmbeddings(sequence=sequence, mask=mask.astype(bool), pooled=pooled)

    def init(self, rng: jax.Array, ids: jax.Array, mask: jax.Array) -> dict:
        """`{'params': boxed params}`: random for trainable kinds, the checkpoint's for pretrained ones."""
        boxed = self.module.init(rng, ids, mask)["params"] if self.pretrained_params is None else \
            self.boxed_pretrained_params()
        return {"params": boxed}

    def boxed_pretrained_params(self) -> dict:
        """The checkpoint's params wrapped in their logical-partitioning boxes (for sharded placement)."""
        ids = jnp.zeros((1, 2), jnp.int32)
        abstract = jax.eval_shape(self.module.init, jax.random.key(0), ids, jnp.ones((1, 2), bool))["params"]
        is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)  # noqa: E731
        as_array = lambda v: v if isinstance(v, jax.ShapeDtypeStruct) else jnp.asarray(v)  # noqa: E731
        return jax.tree.map(lambda box, value: box.replace_boxed(as_array(value)) if is_box(box) else
                            as_array(value), abstract, self.pretrained_params, is_leaf=is_box)

    def apply(self, variables: dict, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = self.encode(variables["params"], ids, mask)
        return out.sequence, out.pooled


def build_text_encoder(text_config, *, abstract: bool = False) -> TextEncoder:
    """The text encoder named by `config.text.kind`, loaded from local files (see the module docstring).

    `abstract`: a CLIP is built by `pretrained.abstract_clip_module` (its `config.json` if there, else the preset)
    with `ShapeDtypeStruct` params and `pretrained.ShapeOnlyTokenizer`, reading no files but config.json (the fit check); other kinds load.
    """
    kind = text_config.kind
    if kind not in KINDS:
        raise ValueError(f"config.text.kind={kind!r} is not known; valid kinds: {list(KINDS)}")
    # ``.get``: sampling and export pass a checkpoint's saved config.json, written before a key existed or by an
    # experiment that did not set it (before experiments/base.py held every key); tests pass partial sections.
    tokenizer_config = text_config.get("tokenizer", None) or {}
    path = checkpoint_dir.resolve_path(text_config.get("path", "") or "")
    tokenizer_kind = tokenizer_config.get("kind", "") or _OWN_TOKENIZER[kind]
    # The tokenizer files sit beside the weights: a checkpoint given as its .safetensors file means its directory.
    tokenizer_path = checkpoint_dir.resolve_path(tokenizer_config.get("path", "") or "") or (
        os.path.dirname(path) if path.endswith(".safetensors") else path)
    max_length = int(text_config.max_length)
    if abstract and kind == "clip":
        module = pretrained.abstract_clip_module(text_config)
        params = nn.unbox(pretrained.abstract_params(module, 2))
        tokenizer = pretrained.ShapeOnlyTokenizer()
        return _checked_encoder(text_config, kind, module, tokenizer, max_length, params, abstract=True)
    tokenizer = text_tokenizers.build_tokenizer(tokenizer_kind, tokenizer_path)

    if kind == "token_embedding":
        # One trainable row per id of the tokenizer: bytes (257 ids) by default, or e.g. a word-piece vocabulary.
        module = text_embedding.TokenEmbeddingEncoder(dim=text_config.dim, vocab_size=tokenizer.vocab_size)
        return TextEncoder(kind, module, tokenizer, max_length, int(text_config.dim), frozen=False)

    if text_config.get("hidden_layer", None) is not None and kind != "clip":
        raise ValueError(f"config.text.hidden_layer={text_config.hidden_layer} applies to text.kind='clip' only "
                         f"(text.kind={kind!r}); remove it.")
    if not path:
        raise ValueError(f"config.text.path is empty: text.kind={kind!r} needs a local checkpoint directory.")
    module, params = _LOADERS[kind](path)
    if kind == "clip":
        foreign_eos = getattr(tokenizer, "eos_id", -1) if tokenizer_kind != _OWN_TOKENIZER[kind] else -1
        module = module.clone(hidden_layer=text_config.get("hidden_layer", None),
                              pool_token_id=foreign_eos if foreign_eos >= 0 else None)
    vocab = module.config.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ValueError(f"The {tokenizer_kind} tokenizer at {tokenizer_path!r} has {tokenizer.vocab_size} ids but "
                         f"the {kind} encoder at {path!r} embeds only {vocab}; change config.text.tokenizer.")
    return _checked_encoder(text_config, kind, module, tokenizer, max_length, params)


def _checked_encoder(text_config, kind, module, tokenizer, max_length, params, *, abstract=False) -> TextEncoder:
    """The `TextEncoder`, after checking `text.dim` and `text.max_length` against the module."""
    path = text_config.get("path", "")
    positions = getattr(module.config, "max_position_embeddings", None)
    if kind == "clip" and positions is not None and max_length > positions:
        raise ValueError(f"config.text.max_length={max_length} but the CLIP text encoder "
                         f"{'preset' if abstract else 'at ' + repr(path)} has {positions} positions; set "
                         f"config.text.max_length<={positions}.")
    probe = jax.eval_shape(lambda p: module.apply({"params": p}, jnp.zeros((1, 2), jnp.int32),
                                                  jnp.ones((1, 2), bool)), params)
    dim = probe.sequence.shape[-1]
    if "dim" in text_config and text_config.dim and int(text_config.dim) != dim:
        raise ValueError(f"config.text.dim={text_config.dim} but the {kind} checkpoint at {path!r} outputs {dim}; "
                         f"set config.text.dim={dim}.")
    return TextEncoder(kind, module, tokenizer, max_length, dim, frozen=bool(text_config.get("frozen", True)),
                       pretrained_params=params, abstract=abstract)
