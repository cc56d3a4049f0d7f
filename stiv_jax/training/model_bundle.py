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
    prediction: str = "velocity"               # what the DiT outputs: 'velocity' (paper) or 'data' (JiT)
    min_time_gap: float = 0.05                 # 'data' prediction: velocity = (x1_hat - x_t) / max(1 - t, gap)

    def init_boxed_params(self, rng: jax.Array) -> dict:
        """Trainable parameters ``{'dit': ..., 'text': ...}`` with their logical-partitioning boxes."""
        text_rng, dit_rng = jax.random.split(rng)
        ids = jnp.zeros((1, self.text_length), jnp.int32)
        mask = jnp.ones((1, self.text_length), bool)
        text_params = self.text_encoder.init(text_rng, ids, mask)["params"]
        seq, pooled = self.text_encoder.apply({"params": text_params}, ids, mask)
        latents = jnp.zeros((1,) + self.latent_shape)
        dit_params = self.dit.init(dit_rng, latents, timesteps=jnp.zeros((1,)), text=seq, text_mask=mask,
                                   pooled_text=pooled)["params"]
        return {"dit": dit_params, "text": text_params}

    def encode_text(self, params, ids, mask):
        """``(sequence [batch, len, dim], pooled [batch, dim])`` for token ``ids``/``mask`` ``[batch, len]``."""
        return self.text_encoder.apply({"params": params["text"]}, ids, mask)

    def velocity(self, params, latents, timesteps, ids, mask):
        """The velocity for latents ``[batch, frames, height, width, channels]`` at ``timesteps`` ``[batch]``.

        With ``prediction='data'`` the DiT predicts the clean sample and the velocity is derived from it
        (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"): a network narrower than its
        patch vectors cannot pass high-dimensional noise through, but can output data near a low-dimensional
        manifold. The loss stays the velocity loss either way.
        """
        seq, pooled = self.encode_text(params, ids, mask)
        out = self.dit.apply({"params": params["dit"]}, latents, timesteps=timesteps, text=seq, text_mask=mask,
                             pooled_text=pooled)
        if self.prediction == "velocity":
            return out
        gap = jnp.maximum(1.0 - timesteps, self.min_time_gap).reshape((-1,) + (1,) * (latents.ndim - 1))
        return (out - latents) / gap


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
    prediction = config.diffusion.get("prediction", "velocity")
    if prediction not in ("velocity", "data"):
        raise ValueError(f"config.diffusion.prediction={prediction!r}; valid: velocity, data")
    return ModelBundle(dit=STIVDiT(model_config), text_encoder=text_encoder, tokenize=tokenize,
                       latent_space=latent_space, latent_shape=latent_shape, text_length=config.text.max_length,
                       prediction=prediction, min_time_gap=config.diffusion.get("min_time_gap", 0.05))
