"""`VAESpace`: a frozen per-frame AutoencoderKL as a latent space with `PixelSpace`'s interface.

`encode(params, video [batch, frames, height, width, 3] in [-1, 1]) -> latents [batch, frames, height / f,
width / f, C]` normalised as diffusers pipelines do (`AutoencoderKLConfig.normalize`: per-channel
`latents_mean`/`latents_std` when the config has them, else `(z - shift_factor) * scaling_factor`); `decode` inverts it.
Frames are independent images: the `batch * frames` images are processed `frame_chunk` at a time (`lax.map`) so
activation memory is bounded, and each chunk is constrained to the batch mesh axes. The video and latent tensors
carry `activation_frames` on their frames axis, so a rule mapping it to a mesh axis shards over frames too.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from stiv_jax.encoders import vae
from stiv_jax.parallel.mesh import shard_logical

_VIDEO = ("activation_batch", "activation_frames", None, None, None)
_IMAGES = ("activation_batch", None, None, None)


@dataclasses.dataclass(frozen=True, eq=False)
class VAESpace:
    """A pretrained AutoencoderKL applied frame by frame.

    Attributes:
      model: the Linen VAE.
      params: its loaded params (plain nested dict), used when `encode`/`decode` get `params=None`.
      frame_chunk: images (frames of all clips) encoded per `lax.map` step; 0 = all at once.
    """

    model: vae.AutoencoderKL
    params: Any
    frame_chunk: int = 16

    @property
    def channels(self) -> int:
        return self.model.config.latent_channels

    @property
    def factor(self) -> int:
        return self.model.config.downsample_factor

    def _chunked(self, fn, images: jax.Array) -> jax.Array:
        """Applies `fn` to `[n, ...]` images `frame_chunk` at a time; returns the stacked `[n, ...]` results."""
        n = images.shape[0]
        chunk = self.frame_chunk if 0 < self.frame_chunk < n else n
        pad = -n % chunk
        images = jnp.pad(images, ((0, pad),) + ((0, 0),) * (images.ndim - 1))
        chunks = images.reshape((-1, chunk) + images.shape[1:])
        out = jax.lax.map(lambda x: shard_logical(fn(shard_logical(x, _IMAGES)), _IMAGES), chunks)
        return out.reshape((-1,) + out.shape[2:])[:n]

    def encode(self, params, video: jax.Array, *, rng: jax.Array | None = None) -> jax.Array:
        """`[b, t, h, w, 3]` in [-1, 1] -> normalised latents `[b, t, h/f, w/f, C]`.

        The posterior mean, or a posterior sample when `rng` is given.
        """
        params = self.params if params is None else params
        b, t = video.shape[:2]
        video = shard_logical(video, _VIDEO)
        images = video.reshape((b * t,) + video.shape[2:])

        def moments(x):
            mean, logvar = self.model.apply({"params": params}, x, method=vae.AutoencoderKL.encode_moments)
            return jnp.concatenate([mean, logvar], axis=-1)

        mean, logvar = jnp.split(self._chunked(moments, images), 2, axis=-1)
        z = mean if rng is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)
        z = self.model.config.normalize(z)
        return shard_logical(z.reshape((b, t) + z.shape[1:]), _VIDEO)

    def decode(self, params, latents: jax.Array) -> jax.Array:
        """Normalised latents `[b, t, h, w, C]` -> video `[b, t, h*f, w*f, 3]` (about [-1, 1], not clipped)."""
        params = self.params if params is None else params
        b, t = latents.shape[:2]
        latents = shard_logical(latents, _VIDEO)
        z = self.model.config.denormalize(latents.reshape((b * t,) + latents.shape[2:]))
        decode = lambda x: self.model.apply({"params": params}, x, method=vae.AutoencoderKL.decode)  # noqa: E731
        images = self._chunked(decode, z)
        return shard_logical(images.reshape((b, t) + images.shape[1:]), _VIDEO)


def load_vae_space(path: str, *, frame_chunk: int = 16) -> VAESpace:
    """A `VAESpace` over the diffusers AutoencoderKL checkpoint directory `path`."""
    model, params = vae.load_autoencoder_kl(path)
    return VAESpace(model=model, params=jax.tree.map(jnp.asarray, params), frame_chunk=frame_chunk)
