"""Typed model configuration, built from the ``config.model`` ml-collections block.

Every component of the STIV DiT (the paper's architecture and model sizes) is a field here. Defaults follow the
paper where it is explicit; where it is silent, the field's comment says what was chosen and why.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from stiv_jax.model.sizes import size_fields

ATTENTION_LAYOUTS = ("factorized", "full3d")
ADALN_MODES = ("shared", "shared_offsets", "per_block")
ATTENTION_IMPLS = ("xla", "dot_product", "splash")
CONTEXT_ATTENTION = ("gspmd", "ulysses", "ring", "hybrid")
REMAT_POLICIES = ("none", "full", "dots", "self_attention", "offload_self_attention", "custom")
REMAT_PLACES = ("device", "offload", "remat")   # what remat_custom does with a named tensor
# The order of the six micro-conditions; the data pipeline yields them as float32 [batch, 6].
MICRO_CONDITIONS = ("orig_height", "orig_width", "crop_top", "crop_left", "frame_stride", "num_frames")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of the STIV DiT."""

    # --- size (Tab. 1); ``size`` fills depth/width/num_heads, explicit fields override it ---
    size: str = ""                  # "", XL, XXL, M, tiny, small (stiv_jax/model/sizes.py)
    depth: int = 4                  # STIV blocks before un-masking (Tab. 1: XL 28, XXL 38, M 46)
    width: int = 128                # hidden size d (XL 1152, XXL 1536, M 3072)
    num_heads: int = 4              # attention heads; head_dim = width // num_heads (64 in the paper)
    mlp_ratio: float = 4.0          # FFN hidden = mlp_ratio * width, GELU (INFERRED 4)
    # --- patches and io ---
    patch_size: int = 2             # spatial patch p (INFERRED 2)
    temporal_patch: int = 1         # temporal patch: 1 (T2I, Fig. 6a best), 2 (paper video models) or 4
    latent_channels: int = 4        # channels of the latent video (filled from config.latent)
    text_dim: int = 128             # width of the text encoder's outputs (filled from config.text)
    # --- block structure ---
    attention_layout: str = "factorized"  # factorized: spatial SA -> temporal SA; full3d: one SA over T*H*W
    temporal_attention: bool = True # False: the T2I model (no temporal SA parameters)
    causal_temporal: bool = False   # causal temporal attention (Fig. 6a: worse, 74.30 vs 78.25)
    qk_norm: bool = True            # RMSNorm per head on self-attention queries and keys
    cross_attn_qk_norm: bool = True # the same on cross-attention (open question 5)
    sandwich_norm: bool = True      # stateless LN after each sub-layer as well as before
    # --- conditioning ---
    condition_norm: bool = True     # stateless LN on each singleton embedding before the sum (Tab. 2)
    # shared: one Linear(d -> 6d) for all blocks (Tab. 2 "+ Shared AdaLN"); shared_offsets: the same plus a
    # learned [6, d] table per block (PixArt-alpha's adaLN-single); per_block: one Linear per block (DiT)
    adaln: str = "shared"
    temporal_adaln: bool = False    # shift/scale/gate on temporal SA too (Fig. 6a: slightly worse)
    adaln_zero: bool = True         # zero-init the AdaLN linears so every gate starts at 0
    zero_init_temporal_out: bool = True  # zero-init temporal SA's output projection: T2V == T2I at step 0
    # A learned per-channel gate on temporal SA's (post-normed) output, zero at init, so a T2V model grown from a
    # T2I one starts as the T2I model and departs from it smoothly. Without it the post-norm turns any non-zero
    # output into a unit-variance one (LN(0) = 0, but its slope at 0 is 1/sqrt(eps)). With the gate, the output
    # projection keeps its ordinary init (a zero kernel under a zero gate would get no gradient). The paper does
    # not say how it initialises temporal SA; the video stage configs turn the gate on.
    temporal_gate: bool = False
    micro_conditions: bool = True   # embed MICRO_CONDITIONS into the singleton condition
    frequency_dim: int = 256        # sinusoid width of the timestep and micro-condition embeddings
    timestep_scale: float = 1000.0  # t in [0, 1] is multiplied by this before the sinusoid
    # --- rotary positions ---
    rope_theta: float = 10000.0     # RoPE base (not stated in the paper; 1e4 assumed)
    rope_spatial_scale: float = 1.0  # position multiplier: old_grid / new_grid when raising resolution
    rope_temporal_scale: float = 1.0  # the same for duration (20 -> 40 frames: 0.5)
    # --- MaskDiT ---
    mask_ratio: float = 0.0         # fraction of spatial positions dropped in training (paper: 0.5)
    decoder_depth: int = 2          # STIV blocks after un-masking, over all tokens (paper: 2)
    # --- scale ---
    scan_layers: bool = False       # nn.scan over blocks (params gain a leading `layers` axis)
    # none | full | dots | self_attention (paper: save only SA outputs) | offload_self_attention (the same tensors
    # kept in host memory instead of HBM) | custom (per tensor name, remat_custom)
    remat_policy: str = "none"
    # remat_policy='custom': ((tensor name, device | offload | remat), ...); names: spatial_attention,
    # temporal_attention, full_attention, cross_attention, ffn_hidden; unnamed tensors are recomputed
    remat_custom: tuple = ()
    attention_impl: str = "xla"     # xla (einsum) | dot_product (jax.nn, cuDNN on GPU) | splash (TPU Pallas)
    # Self-attention over a sequence sharded on the context mesh axis: gspmd (XLA gathers K/V) | ulysses
    # (all-to-all over heads) | ring (k/v blocks around the context ring) | hybrid (Ulysses within groups of
    # context_ulysses_size devices, ring across groups); stiv_jax/parallel/context_attention.py
    context_attention: str = "gspmd"
    context_ulysses_size: int = 2   # hybrid: devices per Ulysses group (divides mesh.ici.context and the heads)
    ring_zigzag: bool = True        # causal ring/hybrid: zig-zag chunk order balances the causal work
    splash_block_q: int = 512       # splash attention block sizes (sequence lengths must be multiples)
    splash_block_kv: int = 512
    splash_block_kv_compute: int = 512
    splash_interpret: bool = False  # run the splash kernel in Pallas interpret mode (CPU testing only)
    # --- LoRA (stiv_jax/model/layers.py; filled from config.finetune.lora by build_model_bundle) ---
    lora_rank: int = 0              # rank r of the low-rank update W + (alpha / r) A B; 0: no adapters
    lora_alpha: float = 1.0         # scale numerator: the update is multiplied by lora_alpha / lora_rank
    lora_dropout: float = 0.0       # dropout on the adapter's input (training only, needs a 'dropout' rng)
    lora_targets: str = ""          # regex re.search-ed over a projection's module path ('block_3/spatial_attn/query')
    norm_eps: float = 1e-6          # stateless LayerNorm / RMSNorm epsilon (computed in float32)
    dtype: str = "float32"          # compute dtype of matmuls (bfloat16 on TPU)
    param_dtype: str = "float32"    # parameter dtype

    @classmethod
    def from_config(cls, model_config: Any) -> "DiTConfig":
        """Builds from a ConfigDict / dict, naming any key that is not a model hyper-parameter.

        ``size`` supplies depth/width/num_heads; keys given explicitly override it.
        """
        values = dict(model_config)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"config.model has unknown keys {unknown}; valid keys: {sorted(names)}")
        if values.get("size"):
            values = {**size_fields(values["size"]), **values}
        custom = values.get("remat_custom", ())
        values["remat_custom"] = tuple((str(n), str(p)) for n, p in (
            custom.items() if hasattr(custom, "items") else custom))
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raises ``ValueError`` naming the ``config.model`` key to change."""
        choices = [("attention_layout", ATTENTION_LAYOUTS), ("adaln", ADALN_MODES),
                   ("attention_impl", ATTENTION_IMPLS), ("context_attention", CONTEXT_ATTENTION),
                   ("remat_policy", REMAT_POLICIES)]
        for key, valid in choices:
            if getattr(self, key) not in valid:
                raise ValueError(f"config.model.{key}={getattr(self, key)!r}; valid: {valid}")
        for name, place in self.remat_custom:
            if place not in REMAT_PLACES:
                raise ValueError(f"config.model.remat_custom[{name!r}]={place!r}; valid: {REMAT_PLACES}")
        if self.remat_policy == "custom" and not self.remat_custom:
            raise ValueError("config.model.remat_policy='custom' needs config.model.remat_custom "
                             "(tensor name -> device | offload | remat)")
        if self.context_ulysses_size < 1:
            raise ValueError(f"config.model.context_ulysses_size={self.context_ulysses_size} must be >= 1")
        if self.width % self.num_heads:
            raise ValueError(f"config.model.width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim={self.head_dim} (width / num_heads) must be a multiple of 4 for 2D RoPE")
        if self.attention_layout == "full3d" and self.head_dim < 12:
            raise ValueError(f"head_dim={self.head_dim} is too small for 3D RoPE; use at least 12")
        if self.temporal_patch not in (1, 2, 4):
            raise ValueError(f"config.model.temporal_patch={self.temporal_patch}; valid: 1, 2, 4")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"config.model.mask_ratio={self.mask_ratio} must be in [0, 1)")
        if self.mask_ratio > 0 and self.decoder_depth < 1:
            raise ValueError("config.model.mask_ratio > 0 needs config.model.decoder_depth >= 1 "
                             "(blocks over all tokens after un-masking)")
        if self.lora_rank < 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"config.finetune.lora.rank={self.lora_rank} must be >= 0 and dropout="
                             f"{self.lora_dropout} in [0, 1)")
        if self.lora_rank and not self.lora_targets:
            raise ValueError("config.finetune.lora.rank > 0 needs config.finetune.lora.targets (a regex over "
                             "projection paths such as '(attn|ffn)/')")
        if self.depth < 1 or self.decoder_depth < 0:
            raise ValueError(f"config.model.depth={self.depth} must be >= 1, decoder_depth >= 0")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_dim(self) -> int:
        return int(self.mlp_ratio * self.width)

    @property
    def has_temporal_attention(self) -> bool:
        """Whether blocks hold a separate temporal SA (factorized layout with temporal attention on)."""
        return self.attention_layout == "factorized" and self.temporal_attention

    @property
    def num_modulations(self) -> int:
        """AdaLN outputs per block: shift/scale/gate for (self-)attention and FFN, plus 3 for temporal SA."""
        return 9 if (self.has_temporal_attention and self.temporal_adaln) else 6

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)
