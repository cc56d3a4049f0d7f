"""Latent spaces the DiT is trained in. ``PixelSpace`` is lossless space-to-depth of RGB frames.

Every latent space maps videos ``[batch, frames, height, width, 3]`` in [-1, 1] to latents
``[batch, frames, height / f, width / f, channels]`` and back.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from einops import rearrange


@dataclasses.dataclass(frozen=True)
class PixelSpace:
    """Pixel-unshuffle by ``factor``: an exact, parameter-free latent space for tiny CPU models."""

    factor: int = 4

    @property
    def channels(self) -> int:
        return 3 * self.factor * self.factor

    def encode(self, params, video: jnp.ndarray) -> jnp.ndarray:
        """``[b, t, h, w, 3]`` -> ``[b, t, h/f, w/f, 3 f^2]``."""
        del params
        f = self.factor
        return rearrange(video, "b t (h p) (w q) c -> b t h w (p q c)", p=f, q=f)

    def decode(self, params, latents: jnp.ndarray) -> jnp.ndarray:
        """Inverse of ``encode``."""
        del params
        f = self.factor
        return rearrange(latents, "b t h w (p q c) -> b t (h p) (w q) c", p=f, q=f)


def build_latent_space(latent_config):
    """The latent space named by ``config.latent.kind``."""
    kind = latent_config.kind
    if kind == "pixels":
        return PixelSpace(factor=latent_config.factor)
    raise ValueError(f"config.latent.kind={kind!r} is not known; valid kinds: ['pixels']")
