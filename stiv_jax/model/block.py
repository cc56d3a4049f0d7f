"""The STIV block: spatial SA -> temporal SA -> cross-attention -> FFN, or full 3D SA instead.

Each self-attention and the FFN follow the sandwich form
``x = x + gate * postnorm(f(prenorm(x) * (1 + scale) + shift))``; temporal SA has no modulation unless
``temporal_adaln``, and under ``temporal_gate`` its output is scaled by a learned, zero-initialised per-channel
gate; cross-attention is ``x = x + CrossAttn(x, text)`` (PixArt-alpha).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from stiv_jax.model.config import DiTConfig
from stiv_jax.model.layers import TOKENS, Attention, FeedForward, dense, modulate, stateless_layer_norm
from stiv_jax.parallel.mesh import shard_logical

# Names of the attention outputs tagged for remat; the paper saves only the self-attention ones.
SELF_ATTENTION_OUTPUTS = ("spatial_attention", "temporal_attention", "full_attention")


def repeat_batch(angles: jnp.ndarray, times: int) -> jnp.ndarray:
    """Per-sample angles ``[batch, length, dim]`` -> ``[batch * times, length, dim]``; shared ``[1, ...]`` kept."""
    return angles if angles.shape[0] == 1 else jnp.repeat(angles, times, axis=0)


class STIVBlock(nn.Module):
    """One STIV block on tokens ``[batch, t, s, width]`` (``t`` temporal, ``s`` spatial tokens).

    ``inputs`` (broadcast to every block, also under ``nn.scan``) holds:
      ``modulation`` ``[batch, num_modulations, width]`` (shared AdaLN; None for per-block AdaLN),
      ``cond`` ``[batch, width]`` singleton condition, ``text`` ``[batch, text_len, width]``,
      ``text_mask`` ``[batch, text_len]`` bool, and rotary angles ``spatial`` ``[batch or 1, s, head_dim / 2]``,
      ``temporal`` ``[1, t, head_dim / 2]`` or ``full`` ``[batch or 1, t * s, head_dim / 2]``.
    Returns ``(tokens, None)`` so that the block can be scanned.
    """

    config: DiTConfig

    def post_norm(self, h):
        return stateless_layer_norm(h, self.config.norm_eps) if self.config.sandwich_norm else h

    @nn.compact
    def __call__(self, x: jnp.ndarray, inputs: dict[str, Any]):
        cfg = self.config
        b, t, s, d = x.shape
        norm = lambda y: stateless_layer_norm(y, cfg.norm_eps)  # noqa: E731
        modulation = inputs.get("modulation")
        if cfg.adaln == "per_block":
            modulation = dense((cfg.num_modulations, d), axes=("embed", "modulation", "embed_out"), config=cfg,
                               name="adaln", zero_init=cfg.adaln_zero)(nn.silu(inputs["cond"]))
        elif cfg.adaln == "shared_offsets":
            # PixArt-alpha's adaLN-single: this block's learned table added to the shared modulation (PixArt
            # initialises it at N(0, 1/d); under adaln_zero it starts at 0 so that every gate still does).
            init = nn.initializers.zeros_init() if cfg.adaln_zero else nn.initializers.normal(d ** -0.5)
            offsets = self.param("adaln_offsets", nn.with_logical_partitioning(init, ("modulation", "embed_out")),
                                 (cfg.num_modulations, d), cfg.weight_dtype)
            modulation = modulation + offsets.astype(modulation.dtype)[None]
        mods = [modulation[:, i] for i in range(cfg.num_modulations)]
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = mods[:6]
        gate = lambda g, h: g[:, None, None, :] * h  # noqa: E731

        if cfg.attention_layout == "factorized":
            # Spatial self-attention per frame (frames folded into the batch), 2D RoPE.
            h = modulate(norm(x), shift_a, scale_a).reshape(b * t, s, d)
            h = Attention(cfg, qk_norm=cfg.qk_norm, remat_name="spatial_attention", name="spatial_attn")(
                h, angles=repeat_batch(inputs["spatial"], t))
            x = shard_logical(x + gate(gate_a, self.post_norm(h.reshape(b, t, s, d))), TOKENS)
            if cfg.temporal_attention:
                # Temporal self-attention per spatial location (positions folded into the batch), 1D RoPE.
                h = norm(x)
                if cfg.temporal_adaln:
                    h = modulate(h, mods[6], mods[7])
                h = h.transpose(0, 2, 1, 3).reshape(b * s, t, d)
                h = Attention(cfg, qk_norm=cfg.qk_norm, causal=cfg.causal_temporal,
                              zero_init_out=cfg.zero_init_temporal_out and not cfg.temporal_gate,
                              remat_name="temporal_attention",
                              length_axis="activation_frames", batch_axis="activation_batch_length",
                              name="temporal_attn")(h, angles=inputs["temporal"])
                h = self.post_norm(h.reshape(b, s, t, d).transpose(0, 2, 1, 3))
                if cfg.temporal_gate:
                    g = self.param("temporal_gate", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                                                 ("embed_out",)), (d,), cfg.weight_dtype)
                    h = h * g.astype(h.dtype)
                x = shard_logical(x + (gate(mods[8], h) if cfg.temporal_adaln else h), TOKENS)
        else:
            # Full 3D self-attention over all t * s tokens, 3D RoPE.
            h = modulate(norm(x), shift_a, scale_a).reshape(b, t * s, d)
            h = Attention(cfg, qk_norm=cfg.qk_norm, remat_name="full_attention", name="full_attn")(
                h, angles=inputs["full"])
            x = shard_logical(x + gate(gate_a, self.post_norm(h.reshape(b, t, s, d))), TOKENS)

        # Cross-attention of every video token to the text sequence (no norm, no modulation); frames are folded
        # into the batch (each sees its sample's text), so tokens sharded over ``context`` stay local.
        h = Attention(cfg, qk_norm=cfg.cross_attn_qk_norm, remat_name="cross_attention", name="cross_attn")(
            x.reshape(b * t, s, d), context=inputs["text"], kv_mask=inputs["text_mask"], context_repeat=t)
        x = shard_logical(x + h.reshape(b, t, s, d), TOKENS)

        h = FeedForward(cfg, name="ffn")(modulate(norm(x), shift_f, scale_f))
        x = shard_logical(x + gate(gate_f, self.post_norm(h)), TOKENS)
        return x, None
