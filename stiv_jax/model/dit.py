"""The STIV DiT: patchify -> condition -> [MaskDiT drop] -> N blocks -> [un-mask] -> decoder blocks -> final layer.

Parameter tree (unscanned): ``patch_embed``, ``condition`` (timestep, pooled text, micro-conditions),
``adaln`` (shared AdaLN), ``text_proj``, ``block_{i}``, ``decoder_block_{i}``, ``mask_token``, ``final_adaln``,
``final_proj``. With ``scan_layers`` the blocks are ``blocks`` / ``decoder_blocks`` with a leading ``layers`` axis
(``stack_block_params`` / ``unstack_block_params`` convert).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stiv_jax.model import maskdit
from stiv_jax.model.block import SELF_ATTENTION_OUTPUTS, TOKENS, STIVBlock
from stiv_jax.model.config import DiTConfig
from stiv_jax.model.embed import PatchEmbed, SingletonCondition, TextProjection, unpatchify
from stiv_jax.model.layers import dense, modulate, stateless_layer_norm
from stiv_jax.model.rope import grid_positions, rope_1d, rope_2d, rope_3d
from stiv_jax.parallel.mesh import shard_logical


# Tensors tagged with ``checkpoint_name`` in the block, the names ``config.model.remat_custom`` may place.
REMAT_NAMES = SELF_ATTENTION_OUTPUTS + ("cross_attention", "ffn_hidden")


def _placed(saved=(), offloaded=()):
    """Saves ``saved`` in device memory and ``offloaded`` in pinned host memory; recomputes every other tensor."""
    if not offloaded:
        return jax.checkpoint_policies.save_only_these_names(*saved)
    return jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=list(saved), names_which_can_be_offloaded=list(offloaded),
        offload_src="device", offload_dst="pinned_host")


def remat_policy(name: str, custom: tuple[tuple[str, str], ...] = ()):
    """The ``jax.checkpoint`` policy of ``config.model.remat_policy`` (None: no rematerialisation).

    ``custom`` (``config.model.remat_custom``, for ``'custom'``): ``(tensor name, device | offload | remat)``
    pairs over ``REMAT_NAMES``; ``offload`` keeps the tensor in host memory between the forward and the backward
    pass (the device-to-host copies overlap with compute on TPU), as MaxText's offload policies do.
    """
    if name == "custom":
        unknown = sorted({n for n, _ in custom} - set(REMAT_NAMES))
        if unknown:
            raise ValueError(f"config.model.remat_custom names {unknown} are not tagged tensors; valid: {REMAT_NAMES}")
        return _placed(saved=[n for n, p in custom if p == "device"],
                       offloaded=[n for n, p in custom if p == "offload"])
    policies = {
        "none": None,
        "full": jax.checkpoint_policies.nothing_saveable,       # keep only block inputs
        "dots": jax.checkpoint_policies.checkpoint_dots,         # keep every matmul output
        "self_attention": _placed(saved=SELF_ATTENTION_OUTPUTS),  # paper
        "offload_self_attention": _placed(offloaded=SELF_ATTENTION_OUTPUTS),  # paper's tensors, in host memory
    }
    return policies[name]


def block_stack(config: DiTConfig, depth: int, name: str):
    """``depth`` STIV blocks as a callable ``(x, inputs) -> x``, scanned and/or rematerialised per config."""
    block_cls = STIVBlock
    if config.remat_policy != "none":
        block_cls = nn.remat(STIVBlock, policy=remat_policy(config.remat_policy, config.remat_custom),
                             prevent_cse=not config.scan_layers)
    if config.scan_layers:
        scanned = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=(nn.broadcast,), length=depth, metadata_params={nn.PARTITION_NAME: "layers"})
        stack = scanned(config, name=f"{name}s")
        return lambda x, inputs: stack(x, inputs)[0]
    blocks = [block_cls(config, name=f"{name}_{i}") for i in range(depth)]

    def run(x, inputs):
        for blk in blocks:
            x, _ = blk(x, inputs)
        return x
    return run


def stack_block_params(params: dict, *, name: str = "block") -> dict:
    """Unscanned ``{name}_{i}`` subtrees -> one scanned ``{name}s`` subtree with a leading layer axis."""
    keys = sorted((k for k in params if k.startswith(f"{name}_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    out = {k: v for k, v in params.items() if k not in keys}
    if keys:
        out[f"{name}s"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[k] for k in keys])
    return out


def unstack_block_params(params: dict, *, name: str = "block") -> dict:
    """Scanned ``{name}s`` -> ``{name}_{i}`` subtrees (inverse of ``stack_block_params``)."""
    out = {k: v for k, v in params.items() if k != f"{name}s"}
    if f"{name}s" in params:
        depth = jax.tree.leaves(params[f"{name}s"])[0].shape[0]
        for i in range(depth):
            out[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: x[i], params[f"{name}s"])
    return out


class STIVDiT(nn.Module):
    """Velocity model ``F(x_t, t, text, micro)`` on latent videos ``[batch, frames, height, width, channels]``."""

    config: DiTConfig

    @nn.compact
    def __call__(self, latents, *, timesteps, text, text_mask, pooled_text, micro_conditions=None,
                 mask_rng=None):
        """Predicts the flow-matching velocity.

        Args:
          latents: noisy latents ``[batch, frames, height, width, channels]``; an image is ``frames = 1``.
          timesteps: ``[batch]`` in [0, 1] (t = 1 is data).
          text: text sequence embedding ``[batch, text_len, text_dim]``.
          text_mask: ``[batch, text_len]`` bool, True for real tokens.
          pooled_text: ``[batch, text_dim]``.
          micro_conditions: ``[batch, 6]`` float32 in ``config.MICRO_CONDITIONS`` order (needed when
            ``config.micro_conditions``).
          mask_rng: MaskDiT key; None (fine-tuning, sampling) runs every token through every block. With a key,
            ``config.mask_ratio`` of the spatial positions (the same in every frame) skip the main blocks;
            ``maskdit.keep_mask(mask_rng, ...)`` gives the kept positions to the loss.

        Returns:
          Velocity ``[batch, frames, height, width, channels]``, float32.
        """
        cfg = self.config
        b, frames = latents.shape[:2]
        x = PatchEmbed(cfg, name="patch_embed")(latents)              # [b, t, s, d]
        _, gt, s, d = x.shape
        gh, gw = latents.shape[2] // cfg.patch_size, latents.shape[3] // cfg.patch_size

        cond = SingletonCondition(cfg, name="condition")(timesteps=timesteps, pooled_text=pooled_text,
                                                         micro_conditions=micro_conditions)
        modulation = None
        if cfg.adaln != "per_block":  # one Linear(d -> 6d) reused by every block (PixArt-alpha adaLN-single)
            modulation = dense((cfg.num_modulations, d), axes=("embed", "modulation", "embed_out"), config=cfg,
                               name="adaln", zero_init=cfg.adaln_zero)(nn.silu(cond))
        inputs = dict(modulation=modulation, cond=cond, text=TextProjection(cfg, name="text_proj")(text),
                      text_mask=text_mask)

        temporal_pos, spatial_pos = grid_positions(gt, gh, gw, spatial_scale=cfg.rope_spatial_scale,
                                                   temporal_scale=cfg.rope_temporal_scale)
        mask_token = None
        if cfg.decoder_depth:
            mask_token = self.param("mask_token", nn.with_logical_partitioning(
                nn.initializers.normal(0.02), ("embed",)), (d,), cfg.weight_dtype)
        keep = None
        if mask_rng is not None and cfg.decoder_depth:
            keep = maskdit.sample_keep_indices(mask_rng, batch=b, num_spatial=s, ratio=cfg.mask_ratio)
            x = shard_logical(maskdit.gather_tokens(x, keep), TOKENS)

        def with_angles(kept_positions):
            """``inputs`` plus the rotary angles for spatial positions ``[batch or 1, s', 2]``."""
            if cfg.attention_layout == "factorized":
                return dict(inputs, spatial=rope_2d(kept_positions, cfg.head_dim, cfg.rope_theta),
                            temporal=rope_1d(temporal_pos, cfg.head_dim, cfg.rope_theta)[None])
            n, k = kept_positions.shape[:2]
            pos3 = jnp.concatenate([jnp.broadcast_to(temporal_pos[None, :, None, None], (n, gt, k, 1)),
                                    jnp.broadcast_to(kept_positions[:, None], (n, gt, k, 2))], axis=-1)
            return dict(inputs, full=rope_3d(pos3.reshape(n, gt * k, 3), cfg.head_dim, cfg.rope_theta))

        main_positions = spatial_pos[None] if keep is None else maskdit.gather_positions(spatial_pos, keep)
        x = block_stack(cfg, cfg.depth, "block")(x, with_angles(main_positions))
        if cfg.decoder_depth:
            if keep is not None:
                x = shard_logical(maskdit.unmask_tokens(x, keep, mask_token, s), TOKENS)
            x = block_stack(cfg, cfg.decoder_depth, "decoder_block")(x, with_angles(spatial_pos[None]))

        # Final layer: stateless norm, shift/scale from the condition, linear to patch values (zero-init).
        shift, scale = jnp.split(dense(2 * d, axes=("embed", "embed_out"), config=cfg, name="final_adaln",
                                       zero_init=cfg.adaln_zero)(nn.silu(cond)), 2, axis=-1)
        x = modulate(stateless_layer_norm(x, cfg.norm_eps), shift, scale)
        patch_values = cfg.temporal_patch * cfg.patch_size ** 2 * cfg.latent_channels
        x = dense(patch_values, axes=("embed", "patch"), config=cfg, name="final_proj", zero_init=True)(x)
        return unpatchify(x, grid=(gt, gh, gw), frames=frames, config=cfg).astype(jnp.float32)

