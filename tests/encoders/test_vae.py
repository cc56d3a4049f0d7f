"""AutoencoderKL parity with diffusers (random weights saved as real safetensors) and the VAE latent space."""
import json

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from stiv_jax.encoders import vae, vae_space

BLOCKS = (8, 16, 16, 16)  # 4 blocks: 8x spatial compression, as every public AutoencoderKL


def _save_reference(path, latent_channels, *, use_quant_conv=True, shift_factor=None):
    torch.manual_seed(0)
    ref = AutoencoderKL(block_out_channels=BLOCKS, norm_num_groups=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=latent_channels, use_quant_conv=use_quant_conv,
                        use_post_quant_conv=use_quant_conv, scaling_factor=0.5, shift_factor=shift_factor).eval()
    with torch.no_grad():  # random GroupNorm affine params so the parity test covers them
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(path)
    return ref


@pytest.mark.parametrize("latent_channels,use_quant_conv,shift_factor", [(4, True, None), (16, False, 0.1)])
def test_autoencoder_kl_matches_diffusers(tmp_path, latent_channels, use_quant_conv, shift_factor):
    ref = _save_reference(tmp_path, latent_channels, use_quant_conv=use_quant_conv, shift_factor=shift_factor)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 24)).astype(np.float32)  # NCHW
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(images)).latent_dist
        z = torch.from_numpy(np.random.default_rng(1).normal(size=dist.mean.shape).astype(np.float32))
        decoded = ref.decode(z).sample
    model, params = vae.load_autoencoder_kl(str(tmp_path))
    mean, logvar = model.apply({"params": params}, images.transpose(0, 2, 3, 1),
                               method=vae.AutoencoderKL.encode_moments)
    np.testing.assert_allclose(np.asarray(mean), dist.mean.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(logvar), dist.logvar.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
    ours = model.apply({"params": params}, z.numpy().transpose(0, 2, 3, 1), method=vae.AutoencoderKL.decode)
    np.testing.assert_allclose(np.asarray(ours), decoded.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=0)


def test_vae_space_chunked_video_roundtrip_matches_per_image_reference(tmp_path):
    ref = _save_reference(tmp_path, 8, shift_factor=0.2)
    space = vae_space.load_vae_space(str(tmp_path), frame_chunk=2)  # 2 clips x 3 frames = 6 images, 3 chunks
    assert (space.channels, space.factor) == (8, 8)
    video = np.random.default_rng(0).uniform(-1, 1, (2, 3, 16, 16, 3)).astype(np.float32)
    latents = jax.jit(lambda v: space.encode(None, v))(video)
    assert latents.shape == (2, 3, 2, 2, 8)
    with torch.no_grad():
        mean = ref.encode(torch.from_numpy(video.reshape(6, 16, 16, 3).transpose(0, 3, 1, 2))).latent_dist.mean
    want = ((mean.numpy().transpose(0, 2, 3, 1) - 0.2) * 0.5).reshape(2, 3, 2, 2, 8)
    np.testing.assert_allclose(np.asarray(latents), want, atol=1e-4, rtol=0)
    decoded = space.decode(None, latents)
    with torch.no_grad():
        want_video = ref.decode(mean).sample.numpy().transpose(0, 2, 3, 1).reshape(2, 3, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(decoded), want_video, atol=1e-4, rtol=0)
    sampled = space.encode(None, video, rng=jax.random.key(0))
    assert sampled.shape == latents.shape and not np.allclose(sampled, latents)


def test_build_latent_space_picks_the_vae_and_checks_the_factor(tmp_path):
    import ml_collections
    from stiv_jax.encoders.latent import build_latent_space
    _save_reference(tmp_path, 4)
    config = ml_collections.ConfigDict(dict(kind="vae", path=str(tmp_path), factor=8, frame_chunk=4))
    space = build_latent_space(config)
    assert isinstance(space, vae_space.VAESpace) and space.channels == 4 and space.frame_chunk == 4
    config.factor = 4
    with pytest.raises(ValueError, match="set config.latent.factor=8"):
        build_latent_space(config)
