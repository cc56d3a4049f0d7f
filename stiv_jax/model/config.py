"""Typed model configuration, built from the ``config.model`` ml-collections block."""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of the STIV DiT (``../shared/STIV_SPEC.md`` sections 2-3)."""

    depth: int = 4                  # STIV blocks (Tab. 1: XL 28, XXL 38, M 46)
    width: int = 128                # hidden size d (XL 1152, XXL 1536, M 3072)
    num_heads: int = 4              # attention heads; head_dim = width // num_heads (64 in the paper)
    mlp_ratio: float = 4.0          # FFN hidden = mlp_ratio * width (INFERRED 4)
    patch_size: int = 2             # spatial patch p (INFERRED 2)
    temporal_patch: int = 1         # temporal patch (paper video models: 2; T2I: 1)
    latent_channels: int = 4        # channels of the latent video
    text_dim: int = 128             # width of the text encoder's sequence / pooled output
    qk_norm: bool = True            # RMSNorm on queries and keys, per head
    rope_theta: float = 10000.0     # RoPE base (not stated in the paper; 1e4 assumed)
    dtype: str = "float32"          # compute dtype of matmuls
    param_dtype: str = "float32"    # parameter dtype

    @classmethod
    def from_config(cls, model_config: Any) -> "DiTConfig":
        """Builds from a ConfigDict / dict, naming any key that is not a model hyper-parameter."""
        values = dict(model_config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"config.model has unknown keys {unknown}; valid keys: {sorted(names)}")
        config = cls(**values)
        if config.width % config.num_heads:
            raise ValueError(f"config.model.width={config.width} is not divisible by num_heads={config.num_heads}")
        return config

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)
