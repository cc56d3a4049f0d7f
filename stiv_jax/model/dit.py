"""The STIV DiT: patchify -> N x (spatial SA, temporal SA, cross-attn, FFN) -> final layer -> unpatchify."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from einops import rearrange

from stiv_jax.model.config import DiTConfig
from stiv_jax.model.layers import (Attention, FeedForward, dense, modulate, stateless_layer_norm,
                                   timestep_sinusoid)
from stiv_jax.model.rope import rope_1d, rope_2d
from stiv_jax.parallel.mesh import shard_logical

TOKENS = ("activation_batch", "activation_frames", "activation_length", "activation_embed")


class STIVBlock(nn.Module):
    """One STIV block on tokens ``[batch, t_tokens, s_tokens, width]`` with the shared AdaLN modulation."""

    config: DiTConfig

    @nn.compact
    def __call__(self, x, *, modulation, text, text_mask, spatial_angles, temporal_angles):
        b, t, s, d = x.shape
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = [modulation[:, i] for i in range(6)]
        # Spatial self-attention per frame (frames folded into the batch), shared AdaLN, sandwich norm.
        h = modulate(stateless_layer_norm(x), shift_a, scale_a).reshape(b * t, s, d)
        h = Attention(self.config, name="spatial_attn")(h, q_angles=spatial_angles)
        x = x + gate_a[:, None, None] * stateless_layer_norm(h.reshape(b, t, s, d))
        x = shard_logical(x, TOKENS)
        # Temporal self-attention per spatial location, no modulation; zero-init output keeps T2I at step 0.
        h = stateless_layer_norm(x).transpose(0, 2, 1, 3).reshape(b * s, t, d)
        h = Attention(self.config, zero_init_out=True, name="temporal_attn")(h, q_angles=temporal_angles)
        x = x + stateless_layer_norm(h.reshape(b, s, t, d).transpose(0, 2, 1, 3))
        # Cross-attention to the text sequence.
        text_mask_rep = jnp.repeat(text_mask, t, axis=0)
        h = Attention(self.config, use_rope=False, name="cross_attn")(
            x.reshape(b * t, s, d), context=jnp.repeat(text, t, axis=0), mask=text_mask_rep)
        x = x + h.reshape(b, t, s, d)
        # Feed-forward with shared AdaLN and sandwich norm.
        h = FeedForward(self.config, name="ffn")(modulate(stateless_layer_norm(x), shift_f, scale_f))
        x = x + gate_f[:, None, None] * stateless_layer_norm(h)
        return shard_logical(x, TOKENS)


class STIVDiT(nn.Module):
    """Velocity model ``F(x_t, t, text)`` on latent videos ``[batch, frames, height, width, channels]``."""

    config: DiTConfig

    @nn.compact
    def __call__(self, latents, *, timesteps, text, text_mask, pooled_text):
        """Predicts the flow-matching velocity.

        Args:
          latents: noisy latents ``[batch, frames, height, width, channels]``.
          timesteps: ``[batch]`` in [0, 1] (t = 1 is data).
          text: text sequence embedding ``[batch, text_len, text_dim]``.
          text_mask: ``[batch, text_len]`` bool, True for real tokens.
          pooled_text: ``[batch, text_dim]``.

        Returns:
          Velocity ``[batch, frames, height, width, channels]``.
        """
        cfg = self.config
        b, f, hh, ww, c = latents.shape
        pt, p = cfg.temporal_patch, cfg.patch_size
        if f % pt or hh % p or ww % p:
            raise ValueError(f"latent shape {latents.shape} is not divisible by patches (t={pt}, s={p})")
        gt, gh, gw = f // pt, hh // p, ww // p
        x = rearrange(latents.astype(cfg.compute_dtype), "b (t pt) (h p) (w q) c -> b t (h w) (pt p q c)",
                      pt=pt, p=p, q=p)
        x = dense(cfg.width, axes=("patch", "embed"), config=cfg, name="patch_embed")(x)
        x = shard_logical(x, TOKENS)

        # Singleton condition: each embedding normalised (condition norm), then summed.
        t_emb = timestep_sinusoid(timesteps)
        t_emb = dense(cfg.width, axes=("freq", "embed"), config=cfg, name="t_embed_in")(t_emb)
        t_emb = dense(cfg.width, axes=("embed", "embed_out"), config=cfg, name="t_embed_out")(nn.silu(t_emb))
        pooled = dense(cfg.width, axes=("text_embed", "embed"), config=cfg, name="pooled_text_proj")(pooled_text)
        cond = stateless_layer_norm(t_emb) + stateless_layer_norm(pooled)
        # Shared AdaLN: one Linear(d -> 6d), zero-initialised so every gate starts at 0 (AdaLN-Zero).
        modulation = dense((6, cfg.width), axes=("embed", "modulation", "embed_out"), config=cfg,
                           name="shared_adaln", zero_init=True)(nn.silu(cond))
        text_tokens = dense(cfg.width, axes=("text_embed", "embed"), config=cfg, name="text_proj_in")(text)
        text_tokens = dense(cfg.width, axes=("embed", "embed_out"), config=cfg, name="text_proj_out")(
            nn.gelu(text_tokens))

        rows, cols = jnp.meshgrid(jnp.arange(gh), jnp.arange(gw), indexing="ij")
        spatial_angles = rope_2d(rows.reshape(1, -1), cols.reshape(1, -1), cfg.head_dim, cfg.rope_theta)
        temporal_angles = rope_1d(jnp.arange(gt)[None], cfg.head_dim, cfg.rope_theta)
        for i in range(cfg.depth):
            x = STIVBlock(cfg, name=f"block_{i}")(
                x, modulation=modulation, text=text_tokens, text_mask=text_mask,
                spatial_angles=spatial_angles, temporal_angles=temporal_angles)

        # Final layer: stateless norm, modulation from the condition, linear to patch values (zero-init).
        shift, scale = jnp.split(dense(2 * cfg.width, axes=("embed", "embed_out"), config=cfg,
                                       name="final_adaln", zero_init=True)(nn.silu(cond)), 2, axis=-1)
        x = modulate(stateless_layer_norm(x), shift, scale)
        x = dense(pt * p * p * c, axes=("embed", "patch"), config=cfg, name="final_proj", zero_init=True)(x)
        out = rearrange(x, "b t (h w) (pt p q c) -> b (t pt) (h p) (w q) c", h=gh, w=gw, pt=pt, p=p, q=p, c=c)
        return out.astype(jnp.float32)
