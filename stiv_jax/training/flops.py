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

# Peak dense bf16 TFLOP/s per chip, from the vendors' spec sheets; matched against ``device.device_kind``.
PEAK_TFLOPS = {
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
    "TPU v6 lite": 918.0, "TPU v6e": 918.0, "TPU7x": 2307.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
}


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


def model_forward_flops(model_config, *, latent_shape, text_length: int, text_dim: int) -> float:
    """Forward FLOPs of the whole DiT for one sample (blocks + patch embedding, conditioning, final layer).

    Args:
      model_config: a ``DiTConfig``.
      latent_shape: ``(frames, height, width, channels)`` of one latent video.
    """
    cfg = model_config
    frames, height, width_px, channels = latent_shape
    f = frames // cfg.temporal_patch
    s = (height // cfg.patch_size) * (width_px // cfg.patch_size)
    n = f * s
    d = cfg.width
    patch_dim = cfg.temporal_patch * cfg.patch_size ** 2 * channels
    hidden = int(cfg.mlp_ratio * d)
    block = block_forward_flops(frames=f, spatial_tokens=s, width=d, mlp_hidden=hidden, text_length=text_length)
    # MaskDiT: the first ``depth`` blocks see the kept spatial tokens only, ``decoder_depth`` blocks see all.
    mask_ratio = float(getattr(cfg, "mask_ratio", 0.0) or 0.0)
    decoder_depth = int(getattr(cfg, "decoder_depth", 0) or 0) if mask_ratio > 0 else 0
    kept = max(1, int(round(s * (1.0 - mask_ratio))))
    masked_block = block_forward_flops(frames=f, spatial_tokens=kept, width=d, mlp_hidden=hidden,
                                       text_length=text_length)
    stem = 2 * n * patch_dim * d + 2 * n * d * patch_dim                    # patch embed + final projection
    conditioning = 2 * (256 * d + d * d + text_dim * d + 6 * d * d + 2 * d * d)  # t-embed, pooled, AdaLN
    text = 2 * text_length * (text_dim * d + d * d)                           # text projection MLP
    return cfg.depth * masked_block.total + decoder_depth * block.total + stem + conditioning + text


def train_step_flops(model_config, *, latent_shape, text_length: int, text_dim: int, batch_size: int) -> float:
    """FLOPs of one optimizer step over a global batch: 3 x forward (forward + backward)."""
    return 3.0 * batch_size * model_forward_flops(model_config, latent_shape=latent_shape,
                                                  text_length=text_length, text_dim=text_dim)


def peak_tflops_per_device(device_kind: str, override: float | None = None) -> float | None:
    """Peak bf16 TFLOP/s of a device kind (None when unknown, e.g. CPU); ``override`` wins when set."""
    if override:
        return float(override)
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            return PEAK_TFLOPS[name]
    return None
