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


def build_latent_space(latent_config, *, abstract: bool = False):
    """The latent space named by ``config.latent.kind``.

    ``pixels``: ``PixelSpace(factor)``. ``vae``: a frozen diffusers AutoencoderKL loaded from
    ``config.latent.path`` (a local directory, one of its .safetensors files, or a Hugging Face cache repository
    with its subfolder: ``.../models--ORG--NAME/vae``), processing ``config.latent.frame_chunk`` frames at a time; ``config.latent.factor``
    must equal its spatial compression (8 for every public AutoencoderKL) and ``config.latent.channels`` (when
    set) its latent channels. ``abstract``: the VAE gets ``ShapeDtypeStruct`` params from
    ``pretrained.abstract_vae_space`` (its ``config.json`` if there, else the preset; no weights read: the fit check).
    """
    # ``.get``: sampling and export pass a checkpoint's saved config.json, written before a key existed or by an
    # experiment that did not set it (before experiments/base.py held every key); tests pass partial sections.
    kind = latent_config.kind
    if kind == "pixels":
        return PixelSpace(factor=latent_config.factor)
    if kind == "vae":
        from stiv_jax.encoders import pretrained
        from stiv_jax.encoders.vae_space import load_vae_space
        if abstract:
            space = pretrained.abstract_vae_space(latent_config)
        elif not latent_config.get("path", ""):
            raise ValueError("config.latent.path is empty: latent.kind='vae' needs a diffusers AutoencoderKL "
                             "directory (config.json + diffusion_pytorch_model.safetensors).")
        else:
            space = load_vae_space(latent_config.path, frame_chunk=int(latent_config.get("frame_chunk", 16)))
        if latent_config.get("channels", 0) and int(latent_config.channels) != space.channels:
            raise ValueError(f"config.latent.channels={latent_config.channels} but the VAE at "
                             f"{latent_config.get('path', '')!r} has {space.channels} latent channels; set "
                             f"config.latent.channels={space.channels}.")
        if latent_config.get("factor", space.factor) != space.factor:
            raise ValueError(f"config.latent.factor={latent_config.factor} but the VAE at {latent_config.path!r} "
                             f"compresses by {space.factor}; set config.latent.factor={space.factor}.")
        return space
    raise ValueError(f"config.latent.kind={kind!r} is not known; valid kinds: ['pixels', 'vae']")
