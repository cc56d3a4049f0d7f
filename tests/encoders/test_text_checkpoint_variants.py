"""T5 / CLIP / BERT checkpoints as they exist in the wild load as transformers reads them.

Each variant is saved by `save_pretrained` (random weights, tiny shapes), edited where real configs differ (v1.0 T5
files omit `feed_forward_proj`; legacy CLIP files use `eos_token_id: 2` and `text_config_dict`), and the reference is
transformers' own `from_pretrained` of the same directory, so "what transformers reads" is the specification.
"""
import os

import numpy as np
import pytest
import torch
import transformers

from checkpoint_testlib import as_hub_cache, edit_config
from stiv_jax.encoders import bert, clip_text, t5

ATOL = 1e-4


def _t(array):
    return torch.from_numpy(np.asarray(array).astype(np.int64))


def _padded_ids(batch, length, vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(batch, length)).astype(np.int64)
    mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    return np.where(mask, ids, 0), mask


def _t5_config(**fields):
    return transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16, **fields)


def _check_t5(path, reference_dir=None):
    ref = transformers.T5EncoderModel.from_pretrained(reference_dir or path, dtype=torch.float32).eval()
    ids, mask = _padded_ids(2, 20, 64, lengths=[20, 7])
    with torch.no_grad():
        want = ref(input_ids=_t(ids), attention_mask=_t(mask)).last_hidden_state.numpy()
    model, params = t5.load_t5_encoder(str(path))
    got = model.apply({"params": params}, ids.astype(np.int32), mask)
    np.testing.assert_allclose(np.asarray(got.sequence), want, atol=ATOL, rtol=0)
    return model.config, ref.config


def test_t5_v1_0_config_without_feed_forward_proj_is_relu_as_in_transformers(tmp_path):
    torch.manual_seed(0)
    transformers.T5EncoderModel(_t5_config(feed_forward_proj="relu")).save_pretrained(tmp_path)
    # The original t5-small ... t5-11b config.json files have no feed_forward_proj (nor the derived fields).
    edit_config(tmp_path, drop=("feed_forward_proj", "dense_act_fn", "is_gated_act", "relative_attention_max_distance"))
    ours, reference = _check_t5(tmp_path)
    assert ours.feed_forward_proj == reference.feed_forward_proj == "relu" and not ours.is_gated
    assert ours.relative_attention_max_distance == reference.relative_attention_max_distance == 128


def test_t5_v1_1_sharded_half_precision_file_loads_as_transformers_reads_it(tmp_path):
    torch.manual_seed(0)
    ref = transformers.T5EncoderModel(_t5_config(feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    ref.to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="4KB")
    shards = sorted(n for n in os.listdir(tmp_path) if n.endswith(".safetensors"))
    assert len(shards) > 1 and os.path.isfile(tmp_path / "model.safetensors.index.json")
    ours, _ = _check_t5(tmp_path)
    assert ours.is_gated and ours.activation_name == "gelu_new"


def test_t5_sharded_fp16_variant_index(tmp_path):
    torch.manual_seed(0)
    cfg = _t5_config(feed_forward_proj="gated-gelu", architectures=["T5WithLMHeadModel"])  # the original t5-small
    transformers.T5EncoderModel(cfg).half().save_pretrained(tmp_path, variant="fp16", max_shard_size="4KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.fp16.json")
    ref = transformers.T5EncoderModel.from_pretrained(tmp_path, variant="fp16", dtype=torch.float32).eval()
    ids, mask = _padded_ids(1, 9, 64, lengths=[9])
    with torch.no_grad():
        want = ref(input_ids=_t(ids), attention_mask=_t(mask)).last_hidden_state.numpy()
    model, params = t5.load_t5_encoder(str(tmp_path))
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, ids.astype(np.int32), mask).sequence),
                               want, atol=ATOL, rtol=0)


def test_mt5_config_takes_mt5_defaults(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.MT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=24, num_layers=2, num_heads=2,
                                 relative_attention_num_buckets=8)
    transformers.MT5EncoderModel(cfg).save_pretrained(tmp_path)
    edit_config(tmp_path, drop=("feed_forward_proj", "dense_act_fn", "is_gated_act"))  # mT5's default: gated-gelu
    ref = transformers.MT5EncoderModel.from_pretrained(tmp_path).eval()
    ids, mask = _padded_ids(2, 12, 64, lengths=[12, 5])
    with torch.no_grad():
        want = ref(input_ids=_t(ids), attention_mask=_t(mask)).last_hidden_state.numpy()
    model, params = t5.load_t5_encoder(str(tmp_path))
    np.testing.assert_allclose(np.asarray(model.apply({"params": params}, ids.astype(np.int32), mask).sequence),
                               want, atol=ATOL, rtol=0)
    assert model.config.is_gated


def test_t5_from_a_hub_cache_snapshot_and_from_its_safetensors_file(tmp_path):
    torch.manual_seed(0)
    transformers.T5EncoderModel(_t5_config(feed_forward_proj="gated-gelu")).save_pretrained(tmp_path / "src")
    repo = as_hub_cache(tmp_path / "src", tmp_path / "hub", repo="google/t5-tiny")
    snapshot = os.path.join(repo, "snapshots", "0123456789abcdef")
    assert os.path.islink(os.path.join(snapshot, "model.safetensors"))
    _check_t5(repo, reference_dir=snapshot)
    model, params = t5.load_t5_encoder(os.path.join(snapshot, "model.safetensors"))
    assert model.config.d_model == 16 and params["shared"]["embedding"].shape == (64, 16)


# --------------------------------------------------------------------------------------------------------- CLIP
VOCAB, EOS = 50, 49


def _clip_text_fields(**fields):
    return dict(dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                     num_attention_heads=4, max_position_embeddings=12, eos_token_id=EOS, bos_token_id=0,
                     pad_token_id=1), **fields)


def _clip_rows():
    """Rows as pipelines and tokenizers write them, with the mask each would pass."""
    ids = np.array([
        [0, 5, 6, 7, EOS, EOS, EOS, EOS, EOS, EOS],  # SD-style: padded with EOS, mask all ones
        [0, 8, EOS, 9, 10, EOS, 1, 1, 1, 1],  # EOS is not the last real token
        [0, 11, 12, 13, 14, 15, 16, 17, 18, EOS],  # full row
        [0, 3, 4, 1, 1, 1, 1, 1, 1, 1],  # no EOS at all: transformers pools position 0
    ])
    mask = np.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 10, [1] * 3 + [0] * 7], bool)
    return ids, mask


def _clip_reference(path, cls=transformers.CLIPTextModel):
    return cls.from_pretrained(path).eval()


def _check_clip(path, ref, *, projected=False, hidden_layer=None):
    ids, mask = _clip_rows()
    with torch.no_grad():
        if isinstance(ref, transformers.CLIPModel):
            out = ref.get_text_features(input_ids=_t(ids), attention_mask=_t(mask), output_hidden_states=True)
            pooled_ref = out.pooler_output
        else:
            out = ref(input_ids=_t(ids), attention_mask=_t(mask), output_hidden_states=True)
            pooled_ref = out.text_embeds if projected else out.pooler_output
    model, params = clip_text.load_clip_text(str(path), hidden_layer=hidden_layer)
    got = model.apply({"params": params}, ids.astype(np.int32), mask)
    want_sequence = out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]
    np.testing.assert_allclose(np.asarray(got.sequence)[mask], want_sequence.numpy()[mask], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(got.pooled), pooled_ref.numpy(), atol=ATOL, rtol=0)
    return model.config


@pytest.mark.parametrize("with_projection", [False, True])
def test_clip_current_config_pools_at_first_eos_like_transformers(tmp_path, with_projection):
    torch.manual_seed(0)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    cls(transformers.CLIPTextConfig(**_clip_text_fields(projection_dim=24))).save_pretrained(tmp_path)
    config = _check_clip(tmp_path, _clip_reference(tmp_path, cls), projected=with_projection)
    assert config.projection_dim == (24 if with_projection else None)


def test_clip_legacy_eos_2_config_pools_at_argmax_of_ids(tmp_path):
    torch.manual_seed(0)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**_clip_text_fields(eos_token_id=2))).save_pretrained(
        tmp_path)
    config = _check_clip(tmp_path, _clip_reference(tmp_path))
    assert config.eos_token_id == 2


def test_clip_config_omitting_fields_takes_transformers_defaults(tmp_path):
    torch.manual_seed(0)
    fields = _clip_text_fields(num_attention_heads=8, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(**fields)).save_pretrained(tmp_path)
    edit_config(tmp_path, drop=("hidden_act", "num_attention_heads", "layer_norm_eps", "projection_dim"))
    config = _check_clip(tmp_path, _clip_reference(tmp_path))
    assert (config.num_attention_heads, config.hidden_act) == (8, "quick_gelu")


def test_clip_penultimate_hidden_layer_is_sdxl_sequence(tmp_path):
    torch.manual_seed(0)
    cls = transformers.CLIPTextModelWithProjection
    cls(transformers.CLIPTextConfig(**_clip_text_fields(hidden_act="gelu", projection_dim=32))).save_pretrained(
        tmp_path)
    _check_clip(tmp_path, _clip_reference(tmp_path, cls), projected=True, hidden_layer=-2)
    _check_clip(tmp_path, _clip_reference(tmp_path, cls), projected=True, hidden_layer=0)


def _clip_model(projection_dim=20, **text_fields):
    vision = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=8,
                  patch_size=4)
    return transformers.CLIPModel(transformers.CLIPConfig(text_config=_clip_text_fields(**text_fields),
                                                          vision_config=vision, projection_dim=projection_dim))


def test_full_clip_model_dir_loads_text_tower_and_projection(tmp_path):
    torch.manual_seed(0)
    _clip_model().save_pretrained(tmp_path, max_shard_size="8KB")  # sharded, vision tower included
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    config = _check_clip(tmp_path, transformers.CLIPModel.from_pretrained(tmp_path).eval())
    assert config.projection_dim == 20 and config.hidden_size == 32


def test_legacy_clip_model_config_with_text_config_dict(tmp_path):
    torch.manual_seed(0)
    _clip_model(eos_token_id=2).half().save_pretrained(tmp_path)  # fp16 file, as openai/clip-vit-large-patch14
    raw = edit_config(tmp_path)
    text = raw.pop("text_config")
    legacy = {k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "max_position_embeddings", "eos_token_id")}
    # Old files hold the tower twice: `text_config_dict` wins; `text_config` carries stale values.
    edit_config(tmp_path, text_config_dict=legacy, text_config={"hidden_size": 999, "model_type": "clip_text_model"})
    ref = transformers.CLIPModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    config = _check_clip(tmp_path, ref)
    assert (config.num_attention_heads, config.hidden_act, config.eos_token_id) == (8, "quick_gelu", 2)


# --------------------------------------------------------------------------------------------------------- BERT
def test_bert_config_omitting_fields_bf16_file_and_prefixed_keys(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=24, num_hidden_layers=2, num_attention_heads=12,
                                  intermediate_size=32, max_position_embeddings=16)
    transformers.BertForMaskedLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)  # keys start with `bert.`
    edit_config(tmp_path, drop=("num_attention_heads", "hidden_act", "layer_norm_eps", "type_vocab_size"))
    ref = transformers.BertModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids, mask = _padded_ids(2, 10, 40, lengths=[10, 4])
    with torch.no_grad():
        want = ref(input_ids=_t(ids), attention_mask=_t(mask)).last_hidden_state.numpy()
    model, params = bert.load_bert(str(tmp_path))
    got = model.apply({"params": params}, ids.astype(np.int32), mask)
    np.testing.assert_allclose(np.asarray(got.sequence)[mask], want[mask], atol=ATOL, rtol=0)
    assert model.config.num_attention_heads == ref.config.num_attention_heads == 12
