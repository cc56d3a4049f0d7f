"""Builds the pieces a run needs from its config: DiT, text encoder and tokenizer, latent space."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.encoders import text_embedding
from stiv_jax.encoders.latent import build_latent_space
from stiv_jax.model.config import DiTConfig
from stiv_jax.model.dit import STIVDiT


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """The DiT plus the encoders around it, and how to initialise their (boxed) parameters."""

    dit: STIVDiT
    text_encoder: Any
    tokenize: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
    latent_space: Any
    latent_shape: tuple[int, int, int, int]    # [frames, height, width, channels] of one training latent
    text_length: int
    # Micro-conditions of an uncropped training clip (model.MICRO_CONDITIONS order), used when none are given.
    default_micro: tuple[float, ...] = (0.0,) * 6

    def micro_conditions(self, batch: int, micro_conditions=None) -> jax.Array:
        """``[batch, 6]`` float32: ``micro_conditions`` if given, else ``default_micro`` for every sample."""
        if micro_conditions is not None:
            return jnp.asarray(micro_conditions, jnp.float32)
        return jnp.broadcast_to(jnp.asarray(self.default_micro, jnp.float32), (batch, 6))

    def init_boxed_params(self, rng: jax.Array) -> dict:
        """Trainable parameters ``{'dit': ..., 'text': ...}`` with their logical-partitioning boxes."""
        text_rng, dit_rng = jax.random.split(rng)
        ids = jnp.zeros((1, self.text_length), jnp.int32)
        mask = jnp.ones((1, self.text_length), bool)
        text_params = self.text_encoder.init(text_rng, ids, mask)["params"]
        seq, pooled = self.text_encoder.apply({"params": text_params}, ids, mask)
        latents = jnp.zeros((1,) + self.latent_shape)
        dit_params = self.dit.init(dit_rng, latents, timesteps=jnp.zeros((1,)), text=seq, text_mask=mask,
                                   pooled_text=pooled, micro_conditions=self.micro_conditions(1))["params"]
        return {"dit": dit_params, "text": text_params}

    def encode_text(self, params, ids, mask):
        """``(sequence [batch, len, dim], pooled [batch, dim])`` for token ``ids``/``mask`` ``[batch, len]``."""
        return self.text_encoder.apply({"params": params["text"]}, ids, mask)

    def velocity(self, params, latents, timesteps, ids, mask, *, micro_conditions=None, mask_rng=None):
        """The DiT velocity for latents ``[batch, frames, height, width, channels]`` and text tokens.

        ``micro_conditions`` ``[batch, 6]`` (the batch's ``micro_conditions``; ``default_micro`` when None);
        ``mask_rng``: MaskDiT key (None = no token masking, as in fine-tuning and sampling).
        """
        seq, pooled = self.encode_text(params, ids, mask)
        micro = self.micro_conditions(latents.shape[0], micro_conditions)
        return self.dit.apply({"params": params["dit"]}, latents, timesteps=timesteps, text=seq, text_mask=mask,
                              pooled_text=pooled, micro_conditions=micro, mask_rng=mask_rng)


def build_model_bundle(config) -> ModelBundle:
    """All model pieces from ``config`` (``model``, ``text``, ``latent``, ``data`` sections)."""
    latent_space = build_latent_space(config.latent)
    if config.text.kind != "token_embedding":
        raise ValueError(f"config.text.kind={config.text.kind!r}; valid: token_embedding")
    text_encoder = text_embedding.TokenEmbeddingEncoder(dim=config.text.dim)
    tokenize = lambda texts: text_embedding.tokenize_bytes(texts, config.text.max_length)  # noqa: E731
    model_config = DiTConfig.from_config(dict(config.model, latent_channels=latent_space.channels,
                                              text_dim=config.text.dim))
    res = config.data.resolution
    factor = config.latent.factor
    latent_shape = (config.data.frames, res // factor, res // factor, latent_space.channels)
    default_micro = (float(res), float(res), 0.0, 0.0, float(config.data.frame_stride), float(config.data.frames))
    return ModelBundle(dit=STIVDiT(model_config), text_encoder=text_encoder, tokenize=tokenize,
                       latent_space=latent_space, latent_shape=latent_shape, text_length=config.text.max_length,
                       default_micro=default_micro)
