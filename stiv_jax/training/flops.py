"""Analytic FLOP count of the STIV DiT, for TFLOP/s per device and MFU.

Matmul FLOPs only (2 per multiply-add); norms, RoPE, softmax and modulation are ignored. Attention is
bidirectional, so the score and value matmuls are counted in full (no causal halving). Per block, with
``F`` temporal tokens (frames), ``S`` spatial tokens per frame, ``N = F * S``, width ``d``, MLP hidden ``m``,
text length ``L``:

- spatial self-attention: projections ``4 * 2 N d^2`` + scores and values ``2 * 2 F S^2 d``
- temporal self-attention: projections ``4 * 2 N d^2`` + scores and values ``2 * 2 S F^2 d``
- cross-attention: query and output ``2 * 2 N d^2``, keys and values ``2 * 2 L d^2`` (the text is projected
  once per sample; all ``N`` video tokens attend to it) + scores and values ``2 * 2 N L d``
- feed-forward: ``2 * 2 N d m``

A training step costs 3x the forward (the backward pass is two matmuls per forward matmul); recomputation from
rematerialisation is deliberately not counted (MFU convention).
"""
from __future__ import annotations

import dataclasses

@dataclasses.dataclass(frozen=True)
class BlockFlops:
    """Forward FLOPs of one STIV block for one sample, split by part."""

    spatial_attention: float
    temporal_attention: float
    cross_attention: float
    feed_forward: float

    @property
    def total(self) -> float:
        return self.spatial_attention + self.temporal_attention + self.cross_attention + self.feed_forward


def block_forward_flops(*, frames: int, spatial_tokens: int, width: int, mlp_hidden: int,
                        text_length: int) -> BlockFlops:
    """Forward FLOPs of one block for one sample of ``frames x spatial_tokens`` tokens."""
    f, s, d, m, txt = frames, spatial_tokens, width, mlp_hidden, text_length
    n = f * s
    return BlockFlops(
        spatial_attention=4 * 2 * n * d * d + 2 * 2 * f * s * s * d,
        temporal_attention=4 * 2 * n * d * d + 2 * 2 * s * f * f * d,
        cross_attention=2 * 2 * n * d * d + 2 * 2 * txt * d * d + 2 * 2 * n * txt * d,
        feed_forward=2 * 2 * n * d * m)


def model_forward_flops(model_config, *, latent_shape, text_length: int, text_dim: int,
                        masked: bool = False) -> float:
    """Forward FLOPs of the whole DiT for one sample (blocks + patch embedding, conditioning, final layer).

    Args:
      model_config: a ``DiTConfig``.
      latent_shape: ``(frames, height, width, channels)`` of one latent video (an image: ``frames = 1``).
      masked: the forward drops ``mask_ratio`` of the spatial tokens in the main blocks (MaskDiT training, a
        ``mask_rng`` given); the ``decoder_depth`` blocks always run, on all tokens, as the DiT does.
    """
    cfg = model_config
    frames, height, width_px, channels = latent_shape
    f = 1 if frames == 1 else frames // cfg.temporal_patch        # an image becomes one temporal patch
    s = (height // cfg.patch_size) * (width_px // cfg.patch_size)
    n = f * s
    d = cfg.width
    patch_dim = cfg.temporal_patch * cfg.patch_size ** 2 * channels
    hidden = int(cfg.mlp_ratio * d)
    mask_ratio = float(getattr(cfg, "mask_ratio", 0.0) or 0.0)
    decoder_depth = int(getattr(cfg, "decoder_depth", 0) or 0)
    kept = max(1, int(round(s * (1.0 - mask_ratio)))) if masked and decoder_depth else s

    def block(spatial_tokens: int) -> float:
        parts = block_forward_flops(frames=f, spatial_tokens=spatial_tokens, width=d, mlp_hidden=hidden,
                                    text_length=text_length)
        if getattr(cfg, "attention_layout", "factorized") == "full3d":   # one SA over all f * s tokens
            tokens = f * spatial_tokens
            return parts.total - parts.spatial_attention - parts.temporal_attention + (
                4 * 2 * tokens * d * d + 2 * 2 * tokens * tokens * d)
        if not getattr(cfg, "temporal_attention", True):
            return parts.total - parts.temporal_attention
        return parts.total

    stem = 2 * n * patch_dim * d + 2 * n * d * patch_dim                    # patch embed + final projection
    conditioning = 2 * (256 * d + d * d + text_dim * d + 6 * d * d + 2 * d * d)  # t-embed, pooled, AdaLN
    text = 2 * text_length * (text_dim * d + d * d)                           # text projection MLP
    return cfg.depth * block(kept) + decoder_depth * block(s) + stem + conditioning + text


def train_step_flops(model_config, *, latent_shape, text_length: int, text_dim: int, batch_size: int,
                     masked: bool | None = None) -> float:
    """FLOPs of one optimizer step over a global batch: 3 x forward (forward + backward).

    ``masked`` defaults to what the train step does: MaskDiT masking when ``mask_ratio > 0``.
    """
    if masked is None:
        masked = float(getattr(model_config, "mask_ratio", 0.0) or 0.0) > 0
    return 3.0 * batch_size * model_forward_flops(model_config, latent_shape=latent_shape, text_length=text_length,
                                                  text_dim=text_dim, masked=masked)


def batch_latent_shape(batch_shapes: dict, *, latent_shape, latent_factor: int) -> tuple[int, int, int, int]:
    """``(frames, height, width, channels)`` of one latent of a batch (a data bucket), from its array shapes.

    ``batch_shapes`` maps batch keys to shapes: ``video`` ``[b, frames, height, width, 3]`` pixels (encoded with
    spatial factor ``latent_factor``) or ``latents`` ``[b, frames, height, width, channels]``; ``latent_shape``
    is the default bucket's, whose channel count every bucket shares.
    """
    if "latents" in batch_shapes:
        return tuple(batch_shapes["latents"][1:])
    if "video" in batch_shapes:
        _, frames, height, width = tuple(batch_shapes["video"])[:4]
        return (frames, height // latent_factor, width // latent_factor, latent_shape[-1])
    raise ValueError(f"batch keys {sorted(batch_shapes)}: need 'video' or 'latents' to count FLOPs")
