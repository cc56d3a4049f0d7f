"""The analytic STIV FLOP count agrees with XLA's cost analysis of the compiled forward pass, for every stage."""
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from stiv_jax.training import accelerators
from stiv_jax.training import flops as flops_lib
from stiv_jax.model.bundle import build_model_bundle
from trainer_testlib import tiny_config

STAGES = ("t2i_256", "t2i_512", "t2v_256", "t2v_256_40f", "t2v_512", "stiv_256", "stiv_512", "stiv_jit_512",
          "long_video", "multiview", "temporal_upsampler", "video_prediction")


def compiled_forward_flops(config, bundle, batch: int, *, masked: bool) -> float:
    """XLA's ``cost_analysis()['flops']`` of the DiT forward (unscanned, so every block is counted)."""
    params = jax.eval_shape(lambda: nn.unbox(bundle.init_boxed_params(jax.random.key(0))))
    latents = jax.ShapeDtypeStruct((batch,) + bundle.latent_shape, jnp.float32)

    def forward(params, latents):
        text = jnp.zeros((batch, bundle.text_length, bundle.text_encoder.dim))
        return bundle.dit.apply({"params": params["dit"]}, latents, timesteps=jnp.zeros((batch,)), text=text,
                                text_mask=jnp.ones((batch, bundle.text_length), bool),
                                pooled_text=jnp.zeros((batch, bundle.text_encoder.dim)),
                                micro_conditions=bundle.micro_conditions(batch),
                                mask_rng=jax.random.key(1) if masked else None)

    cost = jax.jit(forward).lower(params, latents).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


def analytic_forward_flops(config, bundle, batch: int, *, masked: bool) -> float:
    return batch * flops_lib.model_forward_flops(bundle.dit.config, latent_shape=bundle.latent_shape,
                                                 text_length=bundle.text_length, text_dim=bundle.text_encoder.dim,
                                                 masked=masked)


def test_analytic_forward_flops_match_compiled_cost_analysis_within_5_percent():
    config = tiny_config(**{"model.width": 128, "model.num_heads": 2, "model.depth": 2, "text.dim": 64,
                            "data.resolution": 32, "data.frames": 4})
    bundle = build_model_bundle(config)
    ratio = compiled_forward_flops(config, bundle, 2, masked=False) / analytic_forward_flops(
        config, bundle, 2, masked=False)
    # XLA also counts elementwise work (norms, softmax, GELU) that the matmul-only formula leaves out.
    assert 1.0 <= ratio < 1.05, ratio


def stage_structure(stage: str, arg: str):
    """The stage's config with its structure (mask ratio, decoder blocks, frames, patching, layout) kept and its
    sizes made tiny: width 64, 2 + decoder blocks, 64 px, at most 4 frames, 8 text tokens."""
    config = importlib.import_module(f"experiments.{stage}").get_config(arg)
    with config.unlocked():
        config.model.width, config.model.num_heads, config.model.depth = 64, 2, 2
        config.model.scan_layers, config.model.remat_policy = False, "none"
        config.model.attention_impl, config.model.dtype = "xla", "float32"
        config.text.max_length = 8   # the frozen CLIP keeps its width (text.dim); a short prompt
        config.data.resolution = 64
        config.data.frames = config.data.frames if config.data.frames == 1 else 4
    return config


def _stage_args() -> list[tuple[str, str]]:
    """Every stage as pretrained (MaskDiT where it masks) and as its unmasked fine-tune where it has one."""
    out = []
    for stage in STAGES:
        masked = importlib.import_module(f"experiments.{stage}").get_config("size=XL").model.mask_ratio > 0
        out += [(stage, "size=XL")] + ([(stage, "size=XL,unmasked")] if masked else [])
    return out


STAGE_ARGS = _stage_args()


def _structures() -> dict[str, tuple[str, str]]:
    """One (stage, arg) per distinct tiny structure over every stage, MaskDiT and unmasked: stages that differ
    only in sizes, data or init compile the same forward and are checked once, under their joint id."""
    seen: dict[str, list[tuple[str, str]]] = {}
    for stage, arg in STAGE_ARGS:
        config = stage_structure(stage, arg)
        model = {k: v for k, v in config.model.to_dict().items() if not k.startswith("rope_")}  # no FLOPs
        key = repr((model, config.data.frames, config.latent.to_dict()))
        seen.setdefault(key, []).append((stage, arg))
    return {"+".join(f"{s}:{a}" for s, a in group): group[0] for group in seen.values()}


STRUCTURES = _structures()


def test_the_checked_structures_cover_every_stage_config():
    covered = {part for name in STRUCTURES for part in name.split("+")}
    assert covered == {f"{s}:{a}" for s, a in STAGE_ARGS}
    assert len(STAGE_ARGS) > len(STAGES) and 3 <= len(STRUCTURES) < len(STAGE_ARGS)   # images, MaskDiT video, unmasked video at least


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_every_stage_config_counts_what_xla_compiles(name):
    """The MaskDiT forward (a mask key when mask_ratio > 0) and the unmasked fine-tune (mask_ratio 0, decoder
    blocks still run on every token) both match XLA's count of the compiled forward."""
    stage, arg = STRUCTURES[name]
    config = stage_structure(stage, arg)
    bundle = build_model_bundle(config, abstract=True)   # the stage's VAE / CLIP layout, no weight files
    masked = config.model.mask_ratio > 0
    assert config.model.decoder_depth > 0   # the case the old count dropped at mask_ratio == 0
    compiled = compiled_forward_flops(config, bundle, 2, masked=masked)
    analytic = analytic_forward_flops(config, bundle, 2, masked=masked)
    assert 1.0 <= compiled / analytic < 1.12, (name, compiled, analytic)


def test_unmasked_finetune_counts_the_decoder_blocks():
    config = stage_structure("t2v_256", "size=XL,unmasked")
    bundle = build_model_bundle(config, abstract=True)
    cfg = bundle.dit.config
    kwargs = dict(latent_shape=bundle.latent_shape, text_length=bundle.text_length, text_dim=bundle.text_encoder.dim)
    with_decoder = flops_lib.model_forward_flops(cfg, **kwargs)
    import dataclasses
    no_decoder = flops_lib.model_forward_flops(dataclasses.replace(cfg, decoder_depth=0), **kwargs)
    stem_only = flops_lib.model_forward_flops(dataclasses.replace(cfg, decoder_depth=0, depth=0), **kwargs)
    # unmasked, the 2 decoder blocks see the same tokens as the 2 main blocks: they cost exactly as much.
    assert cfg.depth == cfg.decoder_depth == 2
    assert with_decoder - no_decoder == no_decoder - stem_only > 0


def test_each_bucket_is_counted_at_its_own_shape():
    shape = flops_lib.batch_latent_shape({"video": (8, 12, 64, 96, 3)}, latent_shape=(20, 32, 32, 192),
                                         latent_factor=8)
    assert shape == (12, 8, 12, 192)
    assert flops_lib.batch_latent_shape({"latents": (2, 5, 4, 6, 16)}, latent_shape=(20, 32, 32, 16),
                                        latent_factor=8) == (5, 4, 6, 16)
    with pytest.raises(ValueError, match="need 'video' or 'latents'"):
        flops_lib.batch_latent_shape({"text_ids": (8, 4)}, latent_shape=(20, 32, 32, 16), latent_factor=8)


def test_block_flops_count_bidirectional_attention_in_full():
    one = flops_lib.block_forward_flops(frames=1, spatial_tokens=256, width=64, mlp_hidden=256, text_length=8)
    two = flops_lib.block_forward_flops(frames=1, spatial_tokens=512, width=64, mlp_hidden=256, text_length=8)
    # Doubling the tokens doubles the projections and quadruples the score/value matmuls (4 * S^2 * d).
    assert two.spatial_attention - 2 * one.spatial_attention == 8 * 256 ** 2 * 64


def test_peaks_are_looked_up_by_device_kind_and_an_unknown_kind_takes_the_config_value():
    assert accelerators.peak_tflops_per_device("TPU v5 lite") == 197.0
    assert accelerators.peak_tflops_per_device("TPU v5") == 459.0
    assert accelerators.peak_tflops_per_device("NVIDIA H100 80GB HBM3") == 989.0
    assert accelerators.peak_tflops_per_device("NVIDIA H100 PCIe") == 756.0
    assert accelerators.peak_tflops_per_device("NVIDIA H200") == 989.0
    assert accelerators.peak_tflops_per_device("cpu") is None
    assert accelerators.peak_tflops_per_device("NVIDIA B300", override=2500.0) == 2500.0


def test_mfu_of_a_hand_computed_case():
    # 8 devices, 4e15 FLOPs per step in 2 s: 2.5e14 FLOP/s per device = 250 TFLOP/s; of a 1000 TFLOP/s peak: 25%.
    assert accelerators.mfu(flops_per_step=4e15, step_seconds=2.0, num_devices=8, peak_tflops=1000.0) == 0.25
    with pytest.raises(ValueError, match="positive step_seconds"):
        accelerators.mfu(flops_per_step=1.0, step_seconds=0.0, num_devices=1, peak_tflops=1.0)
