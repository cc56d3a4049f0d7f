"""Broken or mislabelled checkpoint directories raise errors that name the file and the field to change."""
import json
import os
import re

import pytest
import safetensors.numpy
import torch
import transformers
from diffusers import AutoencoderKL

from checkpoint_testlib import as_hub_cache, edit_config
from stiv_jax.encoders import bert, checkpoint_dir, clip_text, safetensors_loader, t5, vae


def _t5(path, **fields):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=12, num_layers=1, num_heads=2,
                                relative_attention_num_buckets=4, **fields)
    transformers.T5EncoderModel(cfg).save_pretrained(path)
    return os.path.join(path, "model.safetensors")


def _bert(path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=12,
                                                   max_position_embeddings=8)).save_pretrained(path)


def _clip(path):
    torch.manual_seed(0)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=30, hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, eos_token_id=29)).save_pretrained(path)


def _vae(path, **fields):
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(4, 4), norm_num_groups=2, layers_per_block=1, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  **fields).save_pretrained(path)


def _raises(fn, *fragments, error=Exception):
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    return message


def test_mismatch_report_spells_keys_as_the_checkpoint_does(tmp_path):
    file = _t5(tmp_path, feed_forward_proj="gated-gelu")
    state = safetensors.numpy.load_file(file)
    del state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
    state["encoder.block.0.layer.1.DenseReluDense.wi_1.weight"] = state[
        "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"][:5]
    safetensors.numpy.save_file(state, file)
    message = _raises(lambda: t5.load_t5_encoder(str(tmp_path)),
                      "missing (1): encoder.block.0.layer.1.DenseReluDense.wi_0.weight",
                      "encoder.block.0.layer.1.DenseReluDense.wi_1.weight: file (5, 8)",
                      error=safetensors_loader.CheckpointMismatchError)
    assert "wi.0" not in message and "wi.1" not in message


def test_prefixed_file_keys_are_reported_with_their_prefix(tmp_path):
    _clip(tmp_path)
    file = tmp_path / "model.safetensors"
    # Hub CLIP files (written by transformers 4) prefix every tensor with `text_model.`; transformers 5 does not.
    state = {f"text_model.{k}": v for k, v in safetensors.numpy.load_file(file).items()}
    del state["text_model.final_layer_norm.bias"]
    state["text_model.encoder.layers.0.surprise.weight"] = state["text_model.final_layer_norm.weight"]
    safetensors.numpy.save_file(state, file)
    _raises(lambda: clip_text.load_clip_text(str(file)), "missing (1): text_model.final_layer_norm.bias",
            "unexpected (1): text_model.encoder.layers.0.surprise.weight", str(file),
            error=safetensors_loader.CheckpointMismatchError)


def test_missing_projection_is_spelt_beside_the_prefix(tmp_path):
    torch.manual_seed(0)
    transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=30, hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, eos_token_id=29, projection_dim=6)).save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    state = safetensors.numpy.load_file(file)
    assert "text_model.final_layer_norm.weight" in state  # WithProjection files prefix the tower, not the projection
    del state["text_projection.weight"]
    safetensors.numpy.save_file(state, file)
    message = _raises(lambda: clip_text.load_clip_text(str(tmp_path)), "missing (1): text_projection.weight",
                      error=safetensors_loader.CheckpointMismatchError)
    assert "text_model.text_projection" not in message


def test_gated_file_under_a_v1_0_config_names_feed_forward_proj(tmp_path):
    _t5(tmp_path, feed_forward_proj="gated-gelu")
    edit_config(tmp_path, drop=("feed_forward_proj",))
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), str(tmp_path / "config.json"), "feed_forward_proj='relu'",
            "the field is absent", "set feed_forward_proj to gated-gelu")


def test_truncated_file_is_named(tmp_path):
    file = _t5(tmp_path)
    size = os.path.getsize(file)
    with open(file, "r+b") as f:
        f.truncate(size // 2)
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), file, "truncated", error=ValueError)
    with open(file, "wb") as f:
        f.write(b"\x10")  # shorter than the 8-byte header length
    _raises(lambda: t5.load_t5_encoder(file), file, "truncated", error=ValueError)


def test_heads_not_dividing_the_width_name_the_fields(tmp_path):
    _clip(tmp_path)
    edit_config(tmp_path, num_attention_heads=3)
    _raises(lambda: clip_text.load_clip_text(str(tmp_path)), str(tmp_path / "config.json"), "hidden_size=8",
            "num_attention_heads=3")
    _bert(tmp_path / "bert")
    edit_config(tmp_path / "bert", drop=("num_attention_heads",))  # transformers' default 12 does not divide 8
    _raises(lambda: bert.load_bert(str(tmp_path / "bert")), str(tmp_path / "bert" / "config.json"),
            "num_attention_heads=12")


def test_norm_groups_not_dividing_channels_name_the_fields(tmp_path):
    _vae(tmp_path)
    edit_config(tmp_path, norm_num_groups=3)
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path)), str(tmp_path / "config.json"),
            "block_out_channels[0]=4 is not divisible by norm_num_groups=3")


@pytest.mark.parametrize("family,loader,expected", [
    ("bert", t5.load_t5_encoder, ["this is a bert checkpoint", "model_type='bert'", "config.text.kind='bert'"]),
    ("t5", clip_text.load_clip_text, ["this is a t5 checkpoint", "config.text.kind='t5'"]),
    ("clip", bert.load_bert, ["this is a clip_text_model checkpoint", "config.text.kind='clip'"]),
    ("vae", t5.load_t5_encoder, ["this is an AutoencoderKL checkpoint", "_class_name='AutoencoderKL'",
                                 "config.latent.kind='vae'"]),
    ("t5", vae.load_autoencoder_kl, ["this is a t5 checkpoint", "not an AutoencoderKL one"]),
])
def test_another_family_is_named_from_its_config(tmp_path, family, loader, expected):
    {"bert": _bert, "t5": _t5, "clip": _clip, "vae": _vae}[family](tmp_path)
    _raises(lambda: loader(str(tmp_path)), str(tmp_path / "config.json"), *expected, error=ValueError)


def test_family_from_architectures_when_model_type_is_absent(tmp_path):
    _bert(tmp_path)
    edit_config(tmp_path, drop=("model_type",))
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), "this is a bert checkpoint", "architectures=['BertModel']")
    edit_config(tmp_path, model_type="umt5")  # a T5 relative we do not implement (per-layer position bias)
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), "this is a umt5 checkpoint", "config.text.path")


def test_pipeline_root_points_at_its_subfolders(tmp_path):
    _vae(tmp_path / "vae")
    _clip(tmp_path / "text_encoder")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path)), "No config.json", "config.latent.path",
            "['text_encoder', 'vae']", error=FileNotFoundError)


def test_missing_shard_names_the_index_and_the_shard(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=32, d_model=8, d_kv=4, d_ff=12, num_layers=2, num_heads=2)
    transformers.T5EncoderModel(cfg).save_pretrained(tmp_path, max_shard_size="1KB")
    shards = sorted(n for n in os.listdir(tmp_path) if re.search(r"-of-\d+\.safetensors$", n))
    os.remove(tmp_path / shards[-1])
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), "model.safetensors.index.json", shards[-1],
            error=FileNotFoundError)


def test_pytorch_bin_only_directory_says_so(tmp_path):
    file = _t5(tmp_path)
    os.rename(file, tmp_path / "pytorch_model.bin")
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), "pytorch_model.bin", "safetensors",
            error=FileNotFoundError)
    _raises(lambda: t5.load_t5_encoder(str(tmp_path / "pytorch_model.bin")), "not a .safetensors file",
            error=ValueError)


def test_two_weight_files_ask_for_one(tmp_path):
    file = _t5(tmp_path)
    os.rename(file, tmp_path / "model.fp16.safetensors")
    state = safetensors.numpy.load_file(tmp_path / "model.fp16.safetensors")
    safetensors.numpy.save_file(state, tmp_path / "model.bf16.safetensors")
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), "model.bf16.safetensors", "model.fp16.safetensors",
            "Give the .safetensors file", error=FileNotFoundError)
    model, _ = t5.load_t5_encoder(str(tmp_path / "model.fp16.safetensors"))
    assert model.config.d_model == 8


def test_invalid_config_values_name_the_field(tmp_path):
    _t5(tmp_path)
    edit_config(tmp_path, feed_forward_proj="gated-gelu-new")
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), "feed_forward_proj='gated-gelu-new'", "config.json")
    edit_config(tmp_path, feed_forward_proj="swiglu")
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), "swiglu")
    (tmp_path / "config.json").write_text("{not json")
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), str(tmp_path / "config.json"), "not valid JSON")


def test_vae_latent_normalisation_fields_are_checked(tmp_path):
    _vae(tmp_path)
    edit_config(tmp_path, latents_mean=[0.0] * 4)
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path)), "latents_mean and latents_std", "config.json")
    edit_config(tmp_path, latents_mean=[0.0] * 3, latents_std=[1.0] * 3)
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path)), "latents_mean has 3 values for latent_channels=4")
    edit_config(tmp_path, latents_mean=[0.0] * 4, latents_std=[1.0] * 4, shift_factor=0.1)
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path)), "shift_factor and latents_mean")
    edit_config(tmp_path, latents_mean=None, latents_std=None, shift_factor=None,
                down_block_types=["DownEncoderBlock2D"] * 3)
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path)), "3 down_block_types, 2 up_block_types")
    edit_config(tmp_path, down_block_types=["DownEncoderBlock2D", "CogVideoXDownBlock3D"])
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path)), "down_block_types", "CogVideoXDownBlock3D")


def test_clip_hidden_layer_out_of_range_names_the_option(tmp_path):
    _clip(tmp_path)
    _raises(lambda: clip_text.load_clip_text(str(tmp_path), hidden_layer=-3), "hidden_layer=-3",
            "valid: -2..1")


def test_hub_cache_without_refs_and_several_snapshots_asks_for_one(tmp_path):
    _t5(tmp_path / "a")
    repo = as_hub_cache(tmp_path / "a", tmp_path / "hub", repo="g/t5", revision="aaa")
    _t5(tmp_path / "b")
    as_hub_cache(tmp_path / "b", tmp_path / "hub", repo="g/t5", revision="bbb")
    os.remove(os.path.join(repo, "refs", "main"))
    _raises(lambda: t5.load_t5_encoder(repo), "2 snapshots ['aaa', 'bbb']", "snapshots/<hash>",
            error=FileNotFoundError)
    model, _ = t5.load_t5_encoder(os.path.join(repo, "snapshots", "bbb"))
    assert model.config.d_model == 8
    _raises(lambda: checkpoint_dir.resolve(str(tmp_path / "nowhere")), "No checkpoint at", error=FileNotFoundError)


def test_dangling_hub_symlink_names_the_missing_blob(tmp_path):
    _t5(tmp_path / "src")
    repo = as_hub_cache(tmp_path / "src", tmp_path / "hub")
    link = os.path.join(repo, "snapshots", "0123456789abcdef", "model.safetensors")
    os.remove(os.path.realpath(link))
    _raises(lambda: t5.load_t5_encoder(repo), link, "blobs", "interrupted", error=FileNotFoundError)


def test_wrongly_typed_config_value_names_the_field(tmp_path):
    _t5(tmp_path)
    edit_config(tmp_path, num_heads="2")
    _raises(lambda: t5.load_t5_encoder(str(tmp_path)), str(tmp_path / "config.json"), "num_heads='2' should be int")
    _vae(tmp_path / "vae")
    edit_config(tmp_path / "vae", block_out_channels=[4, "4"])
    _raises(lambda: vae.load_autoencoder_kl(str(tmp_path / "vae")), "block_out_channels=[4, '4']")


def test_task_heads_of_bert_are_skipped_as_transformers_skips_them(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=12, max_position_embeddings=8)
    transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
    model, params = bert.load_bert(str(tmp_path))
    assert "classifier" not in params and model.config.hidden_size == 8
