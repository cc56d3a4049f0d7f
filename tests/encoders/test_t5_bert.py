"""T5 encoder and BERT parity with transformers (random weights saved as real safetensors)."""
import numpy as np
import pytest
import torch
import transformers

from stiv_jax.encoders import bert, t5


def _padded_ids(batch, length, vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(batch, length)).astype(np.int64)
    mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
    return np.where(mask, ids, 0), mask


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_t5_encoder_matches_transformers(tmp_path, feed_forward_proj):
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=101, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj=feed_forward_proj,
        relative_attention_num_buckets=8, relative_attention_max_distance=20)
    ref = transformers.T5EncoderModel(cfg).eval()
    ref.save_pretrained(tmp_path)
    # 40 tokens > max_distance so the logarithmic buckets and their clamp are exercised.
    ids, mask = _padded_ids(2, 40, 101, lengths=[40, 17])
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)))
    model, params = t5.load_t5_encoder(str(tmp_path))
    ours = model.apply({"params": params}, ids.astype(np.int32), mask)
    np.testing.assert_allclose(np.asarray(ours.sequence), want.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    m = torch.from_numpy(mask[..., None].astype(np.float32))
    mean = (want.last_hidden_state * m).sum(1) / m.sum(1)
    np.testing.assert_allclose(np.asarray(ours.pooled), mean.numpy(), atol=1e-4, rtol=0)


def test_bert_matches_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=24)
    ref = transformers.BertModel(cfg).eval()
    ref.save_pretrained(tmp_path)
    ids, mask = _padded_ids(3, 20, 97, lengths=[20, 9, 2])
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)))
    model, params = bert.load_bert(str(tmp_path))
    ours = model.apply({"params": params}, ids.astype(np.int32), mask)
    # Compare real tokens only: transformers' padded rows are not defined the same way in every attention backend.
    np.testing.assert_allclose(np.asarray(ours.sequence)[mask], want.last_hidden_state.numpy()[mask], atol=1e-4,
                               rtol=0)
