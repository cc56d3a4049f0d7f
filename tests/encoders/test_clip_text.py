"""CLIP text tower parity with transformers' CLIPTextModel (random weights saved as real safetensors)."""
import numpy as np
import pytest
import torch
import transformers

from stiv_jax.encoders import clip_text


def _ids_and_mask(batch, length, vocab, eos, lengths, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, eos, size=(batch, length)).astype(np.int64)
    mask = np.zeros((batch, length), bool)
    for row, n in enumerate(lengths):
        ids[row, n - 1] = eos  # EOS closes each caption, as the CLIP tokenizer writes it
        ids[row, n:] = 0
        mask[row, :n] = True
    return ids, mask


@pytest.mark.parametrize("act,with_projection", [("quick_gelu", False), ("gelu", True)])
def test_clip_text_matches_transformers(tmp_path, act, with_projection):
    torch.manual_seed(0)
    vocab = 99
    cfg = transformers.CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, hidden_act=act, eos_token_id=vocab - 1, bos_token_id=0, pad_token_id=0,
        projection_dim=24)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    ref = cls(cfg).eval()
    ref.save_pretrained(tmp_path)
    ids, mask = _ids_and_mask(3, 12, vocab, vocab - 1, lengths=[12, 5, 1])
    with torch.no_grad():
        out = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask.astype(np.int64)))
    model, params = clip_text.load_clip_text(str(tmp_path))
    ours = model.apply({"params": params}, ids.astype(np.int32), mask)
    np.testing.assert_allclose(np.asarray(ours.sequence), out.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    pooled_ref = out.text_embeds if with_projection else out.pooler_output
    np.testing.assert_allclose(np.asarray(ours.pooled), pooled_ref.numpy(), atol=1e-4, rtol=0)
    assert ours.sequence.shape == (3, 12, 32) and ours.mask.dtype == bool
