"""Stage configs train on the paper's frozen encoders (8-channel VAE, CLIP-bigG over the T5 tokenizer) by default:
refused without their files, one error naming every key; stand-ins only for runlocal and the explicit opt-in;
the fit check compiles the real encoders' shapes without any weight file."""
import json
import os

import jax
import numpy as np
import pytest

from stiv_jax.encoders import pretrained
from stiv_jax.model.bundle import build_model_bundle
from tests.experiments.test_golden_configs import STAGES, load

pytestmark = pytest.mark.unoptimized_compile  # a few steps of many programs: compiling dominates

LAYOUT_WORDS = ("diffusion_pytorch_model.safetensors", "model.safetensors", "spiece.model", "config.json")


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_defaults_to_the_paper_encoders_and_keeps_the_stand_ins_opt_in(stage):
    config = load(stage, "size=XL")
    assert (config.latent.kind, config.latent.channels, config.latent.factor) == ("vae", 8, 8)
    assert (config.text.kind, config.text.preset, config.text.dim) == ("clip", "clip_bigg", 1280)
    assert config.text.tokenizer.kind == "sentencepiece" and config.text.frozen
    for arg in ("runlocal", "size=XL,stand_ins"):
        stand_in = load(stage, arg)
        assert (stand_in.latent.kind, stand_in.text.kind, stand_in.text.tokenizer.kind) == (
            "pixels", "token_embedding", ""), arg


def test_training_without_the_files_is_refused_with_one_error_naming_every_key_and_layout(tmp_path):
    config = load("t2v_256", "size=XL")
    with pytest.raises(FileNotFoundError) as error:
        build_model_bundle(config)
    message = str(error.value)
    for key in ("config.latent.path=''", "config.text.path=''", "config.text.tokenizer.path=''"):
        assert key in message, message
    assert all(word in message for word in LAYOUT_WORDS), message
    assert "stand_ins" in message and "docs/pretrained_checkpoints.md" in message
    # A VAE directory given, the text encoder still missing: only the text keys are named.
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    config.latent.path = str(tmp_path / "vae")
    config.text.path = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as error:
        build_model_bundle(config)
    assert "config.latent.path" not in str(error.value)
    assert f"config.text.path={str(tmp_path / 'nowhere')!r}" in str(error.value)


def test_abstract_bundle_has_the_paper_encoders_shapes_without_any_file():
    bundle = build_model_bundle(load("t2v_256", "size=XL"), abstract=True)
    assert bundle.latent_shape == (20, 32, 32, 8)        # 256 px / 8, 8 channels (the paper's latent grid)
    assert bundle.dit.config.latent_channels == 8 and bundle.dit.config.text_dim == 1280
    assert (bundle.text_length, bundle.text_encoder.dim) == (77, 1280)
    clip = bundle.text_encoder.pretrained_params
    tower = bundle.text_encoder.module.config
    assert (tower.num_hidden_layers, tower.num_attention_heads, tower.hidden_size) == (32, 20, 1280)   # paper's encoder
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(clip))
    # Hand count of CLIP-bigG's text tower: 49408 x 1280 token + 77 x 1280 position embeddings; per layer two
    # LayerNorms (2 x 2 x 1280), q/k/v/o (4 x (1280^2 + 1280)), MLP 1280 -> 5120 -> 1280 with biases; final
    # LayerNorm; the 1280 x 1280 text projection (no bias).
    d, m = 1280, 5120
    layer = 4 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
    assert count == 49408 * d + 77 * d + 32 * layer + 2 * d + d * d
    vae = bundle.latent_space
    assert (vae.channels, vae.factor) == (8, 8)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(vae.params))
    frozen = bundle.frozen_boxed_params(("video", "text_ids"))   # both encoders run in the step
    assert set(frozen) == {"text", "latent"}
    assert set(bundle.frozen_boxed_params(("latents", "text_embeddings"))) == set()   # precomputed: neither
    config = load("t2v_256", "size=XL")
    config.latent.preset = "sdxl"
    with pytest.raises(ValueError, match=r"config.latent.preset='sdxl' is not known; valid: \['flux_vae', 'sd_vae'\]"):
        build_model_bundle(config, abstract=True)
    config = load("t2v_256", "size=XL")
    config.text.max_length = 128
    with pytest.raises(ValueError, match=r"config.text.max_length=128 .* 77 positions; set config.text.max_length<=77"):
        build_model_bundle(config, abstract=True)


def _tiny_encoder_configs(tmp_path):
    """config.json files only (no weights) of a tiny CLIP text tower and an 8-channel AutoencoderKL."""
    clip = tmp_path / "clip"
    clip.mkdir()
    clip.joinpath("config.json").write_text(json.dumps(dict(
        architectures=["CLIPTextModelWithProjection"], model_type="clip_text_model", vocab_size=64, hidden_size=32,
        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
        hidden_act="gelu", projection_dim=32)))
    vae = tmp_path / "vae"
    vae.mkdir()
    vae.joinpath("config.json").write_text(json.dumps(dict(
        _class_name="AutoencoderKL", block_out_channels=[8, 8, 8, 8], norm_num_groups=4, layers_per_block=1,
        latent_channels=8, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)))
    return str(clip), str(vae)


def test_fit_check_compiles_a_stage_config_with_the_real_encoder_shapes_without_weight_files(tmp_path):
    from stiv_jax import compile as compile_lib
    clip, vae = _tiny_encoder_configs(tmp_path)
    config = load("t2v_256", "size=tiny")
    config.latent.path, config.text.path, config.text.dim, config.text.max_length = vae, clip, 32, 16
    config.data.resolution, config.data.frames, config.data.batch_size = 32, 4, 8
    config.model.attention_impl, config.model.dtype = "xla", "float32"
    assert pretrained.missing_checkpoints(config)   # no weights and no spiece.model: training would be refused
    results = compile_lib.fit_check(config, compile_lib.parse_topology("cpu-8", hbm_gib=16), log=lambda *_: None)
    assert len(results) == 1 and not results[0].error and results[0].flops > 0
    # The frozen VAE and CLIP run inside the step from their config.json shapes: the VAE's conv_in kernel
    # [3, 3, 3, 8] (no DiT weight is a 3x3 conv) and CLIP's [64, 32] token embedding are in the compiled program.
    assert "f32[3,3,3,8]" in results[0].hlo_text and "f32[64,32]" in results[0].hlo_text
    bundle = build_model_bundle(config, abstract=True)
    assert bundle.latent_shape == (4, 4, 4, 8) and bundle.dit.config.text_dim == 32
    assert not os.path.exists(os.path.join(clip, "model.safetensors"))


def test_fit_check_of_precomputed_latent_batches_holds_no_encoder(tmp_path):
    """data.kind=latent (stiv_jax.data.encode output): the step takes bf16 latents and text embeddings, and the
    VAE and CLIP stay out of the compiled program."""
    from stiv_jax import compile as compile_lib
    from stiv_jax.data.buckets import video_buckets
    clip, vae = _tiny_encoder_configs(tmp_path)
    config = load("t2v_256", "size=tiny")
    config.latent.path, config.text.path, config.text.dim, config.text.max_length = vae, clip, 32, 16
    config.data.resolution, config.data.frames, config.data.batch_size = 32, 4, 8
    config.data.kind = "latent"
    config.model.attention_impl, config.model.dtype = "xla", "float32"
    from stiv_jax.training.compiled import batch_specs
    specs = batch_specs(config, video_buckets(config.data)[0], latent_shape=(4, 4, 4, 8))
    assert specs["latents"].shape == (8, 4, 4, 4, 8) and specs["text_embeddings"].shape == (8, 16, 32)
    assert "video" not in specs and "text_ids" not in specs
    results = compile_lib.fit_check(config, compile_lib.parse_topology("cpu-8", hbm_gib=16), log=lambda *_: None)
    assert len(results) == 1 and not results[0].error and results[0].flops > 0
    hlo = results[0].hlo_text
    assert "f32[3,3,3,8]" not in hlo and "CLIPTextTransformer" not in hlo   # no VAE conv_in, no CLIP op
    assert "bf16[1,4,4,4,8]" in hlo   # this chip's shard of the latent batch   # this chip's shard of the latent batch
