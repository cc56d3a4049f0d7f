"""The full-size public architectures (CLIP-bigG, T5-XXL, SD/FLUX VAE) lay out exactly as the reference's tensors.

The reference models are built on PyTorch's meta device (no memory); their state-dict shapes are mapped onto our
abstract params with zero-stride arrays, so a wrong width, depth or name at full size fails here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL

from stiv_jax.encoders import clip_text, safetensors_loader, t5, vae


def _reference_shapes(module):
    return {k: np.broadcast_to(np.zeros((), np.float32), tuple(v.shape)) for k, v in module.state_dict().items()}


def _check(model, reference, example, **kwargs):
    abstract = jax.eval_shape(model.init, jax.random.key(0), *example)["params"]
    mapped = safetensors_loader.convert_state_dict(_reference_shapes(reference), abstract, dtype=None, **kwargs)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(mapped))
    assert count == sum(p.numel() for p in reference.parameters())
    return count


def test_clip_bigg_text_layout():
    fields = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                  num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280)
    with torch.device("meta"):
        reference = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**fields))
    ours = clip_text.CLIPTextTransformer(clip_text.CLIPTextConfig(**fields))
    ids = jnp.zeros((1, 77), jnp.int32)
    count = _check(ours, reference, (ids, jnp.ones((1, 77), bool)), key_prefix="text_model.",
                   ignore_unexpected=[r"position_ids"])
    assert 690e6 < count < 700e6  # the paper's "bigG" text tower: about 0.7B parameters


def test_t5_xxl_encoder_layout():
    with torch.device("meta"):
        reference = transformers.T5EncoderModel(transformers.T5Config(
            vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu"))
    count = _check(t5.T5Encoder(t5.T5_XXL), reference, (jnp.zeros((1, 8), jnp.int32), jnp.ones((1, 8), bool)),
                   aliases={"encoder.embed_tokens.weight": "shared.weight"})
    assert 4.7e9 < count < 4.8e9


def test_flux_vae_layout():
    config = vae.FLUX_VAE
    with torch.device("meta"):
        reference = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                                  down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False,
                                  use_post_quant_conv=False)
    _check(vae.AutoencoderKL(config), reference, (jnp.zeros((1, 16, 16, 3)),))
