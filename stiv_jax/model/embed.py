"""Inputs of the DiT: 3D patch embedding ("cubify"), its T2I -> T2V inflation, the singleton condition.

Spec sections 2.2 (patches) and 2.4 (timestep, pooled text and micro-conditions, each embedded and normalised).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from stiv_jax.model.config import DiTConfig, MICRO_CONDITIONS
from stiv_jax.model.layers import TOKENS, dense, sinusoid, stateless_layer_norm
from stiv_jax.parallel.mesh import shard_logical


def patchify(latents: jnp.ndarray, config: DiTConfig) -> jnp.ndarray:
    """``[batch, frames, height, width, channels]`` -> patches ``[batch, t, h * w, pt, p, p, channels]``.

    An image (``frames == 1``) with ``temporal_patch > 1`` becomes a static video of ``temporal_patch`` frames,
    which an inflated kernel maps to the T2I embedding.
    """
    pt, p = config.temporal_patch, config.patch_size
    frames, height, width = latents.shape[1:4]
    if frames == 1 and pt > 1:
        latents = jnp.repeat(latents, pt, axis=1)
        frames = pt
    if frames % pt or height % p or width % p:
        raise ValueError(f"latent shape {latents.shape} [batch, frames, height, width, channels] is not divisible "
                         f"by config.model.temporal_patch={pt} / patch_size={p}")
    return rearrange(latents, "b (t pt) (h p) (w q) c -> b t (h w) pt p q c", pt=pt, p=p, q=p)


def unpatchify(tokens: jnp.ndarray, *, grid: tuple[int, int, int], frames: int, config: DiTConfig) -> jnp.ndarray:
    """``[batch, t, h * w, pt * p * p * channels]`` -> ``[batch, frames, height, width, channels]``.

    For an image input with ``temporal_patch > 1`` the ``temporal_patch`` output frames are averaged.
    """
    pt, p = config.temporal_patch, config.patch_size
    _, gh, gw = grid
    video = rearrange(tokens, "b t (h w) (pt p q c) -> b (t pt) (h p) (w q) c", h=gh, w=gw, pt=pt, p=p, q=p)
    if frames == 1 and pt > 1:
        video = video.mean(axis=1, keepdims=True)
    return video


class PatchEmbed(nn.Module):
    """3D patch embedding: a ``[pt, p, p, channels] -> width`` linear map on non-overlapping cubes."""

    config: DiTConfig

    @nn.compact
    def __call__(self, latents: jnp.ndarray) -> jnp.ndarray:
        """``[batch, frames, height, width, channels]`` -> tokens ``[batch, t, h * w, width]``."""
        cfg = self.config
        patches = patchify(latents.astype(cfg.compute_dtype), cfg)
        tokens = dense(cfg.width, axes=("patch_t", "patch_h", "patch_w", "channels", "embed"), config=cfg,
                       axis=(-4, -3, -2, -1), name="proj")(patches)
        return shard_logical(tokens, TOKENS)


def inflate_patch_embed(params_t2i: Any, temporal_patch: int) -> Any:
    """Inflates a T2I patch embedding (temporal patch 1) along time for a video model.

    The ``[1, p, p, c, width]`` kernel is repeated ``temporal_patch`` times and divided by it, so a static video
    embeds exactly as its frame did in the T2I model. Accepts the DiT parameter tree (``{'patch_embed': ...}``)
    or the patch embedding's own subtree (``{'proj': {'kernel', 'bias'}}``); returns the same structure.
    """
    if "patch_embed" in params_t2i:
        return {**params_t2i, "patch_embed": inflate_patch_embed(params_t2i["patch_embed"], temporal_patch)}
    kernel = params_t2i["proj"]["kernel"]
    if kernel.ndim != 5 or kernel.shape[0] != 1:
        raise ValueError(f"patch-embed kernel of shape {kernel.shape}: expected a T2I kernel [1, p, p, c, width]")
    inflated = jnp.repeat(kernel, temporal_patch, axis=0) / temporal_patch
    return {**params_t2i, "proj": {**params_t2i["proj"], "kernel": inflated.astype(kernel.dtype)}}


class MicroConditionEmbedding(nn.Module):
    """Per-property sinusoid -> MLP -> stateless LN for each of ``MICRO_CONDITIONS``, summed."""

    config: DiTConfig

    @nn.compact
    def __call__(self, micro: jnp.ndarray) -> jnp.ndarray:
        """``[batch, 6]`` float32 (MICRO_CONDITIONS order) -> ``[batch, width]``."""
        cfg = self.config
        n, dt = len(MICRO_CONDITIONS), cfg.compute_dtype
        if micro.shape[-1] != n:
            raise ValueError(f"micro_conditions has shape {micro.shape}; expected [batch, {n}] in the order "
                             f"{MICRO_CONDITIONS}")
        init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=-2, out_axis=-1, batch_axis=(0,))
        zeros = nn.initializers.zeros_init()

        def param(name, initializer, shape, axes):
            return self.param(name, nn.with_logical_partitioning(initializer, axes), shape, cfg.weight_dtype).astype(dt)

        w1 = param("in_kernel", init, (n, cfg.frequency_dim, cfg.width), ("micro", "freq", "embed"))
        b1 = param("in_bias", zeros, (n, cfg.width), ("micro", "embed"))
        w2 = param("out_kernel", init, (n, cfg.width, cfg.width), ("micro", "embed", "embed_out"))
        b2 = param("out_bias", zeros, (n, cfg.width), ("micro", "embed_out"))
        h = jnp.einsum("bmf,mfd->bmd", sinusoid(micro, cfg.frequency_dim).astype(dt), w1) + b1
        h = jnp.einsum("bmd,mde->bme", nn.silu(h), w2) + b2
        if cfg.condition_norm:
            h = stateless_layer_norm(h, cfg.norm_eps)
        return h.sum(axis=1)


class SingletonCondition(nn.Module):
    """``c = LN(t_emb) + LN(proj(pooled text)) + sum_i LN(micro_i)`` ``[batch, width]``."""

    config: DiTConfig

    @nn.compact
    def __call__(self, *, timesteps, pooled_text, micro_conditions=None):
        """``timesteps`` ``[batch]``, ``pooled_text`` ``[batch, text_dim]``, ``micro_conditions`` ``[batch, 6]``."""
        cfg = self.config
        norm = (lambda x: stateless_layer_norm(x, cfg.norm_eps)) if cfg.condition_norm else (lambda x: x)
        t_emb = sinusoid(timesteps * cfg.timestep_scale, cfg.frequency_dim)
        t_emb = dense(cfg.width, axes=("freq", "embed"), config=cfg, name="timestep_in")(t_emb)
        t_emb = dense(cfg.width, axes=("embed", "embed_out"), config=cfg, name="timestep_out")(nn.silu(t_emb))
        pooled = dense(cfg.width, axes=("text_embed", "embed"), config=cfg, name="pooled_text")(pooled_text)
        cond = norm(t_emb) + norm(pooled)
        if cfg.micro_conditions:
            if micro_conditions is None:
                raise ValueError("config.model.micro_conditions=True needs micro_conditions [batch, 6] "
                                 f"({', '.join(MICRO_CONDITIONS)})")
            cond = cond + MicroConditionEmbedding(cfg, name="micro")(micro_conditions)
        return cond


class TextProjection(nn.Module):
    """Two-layer GELU MLP ``text_dim -> width -> width`` on the text sequence (PixArt caption projection)."""

    config: DiTConfig

    @nn.compact
    def __call__(self, text: jnp.ndarray) -> jnp.ndarray:
        """``[batch, text_len, text_dim]`` -> ``[batch, text_len, width]``."""
        cfg = self.config
        h = dense(cfg.width, axes=("text_embed", "embed"), config=cfg, name="in")(text)
        h = dense(cfg.width, axes=("embed", "embed_out"), config=cfg, name="out")(nn.gelu(h))
        return shard_logical(h, ("activation_batch", "activation_text_length", "activation_embed"))

