"""AutoencoderKL checkpoints as they exist in the wild: diffusers' defaults, latents_mean/std, shift factors, 4 and
16 latent channels, fp16 variants, sharded files and hub-cache pipeline subfolders, each against diffusers."""
import json
import os
import types

import jax
import numpy as np
import torch
from diffusers import AutoencoderKL
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img import (
    StableDiffusionXLImg2ImgPipeline)

from checkpoint_testlib import as_hub_cache, edit_config
from stiv_jax.encoders import vae, vae_space

ATOL = 1e-4


def _reference(latent_channels, **fields):
    torch.manual_seed(0)
    blocks = fields.pop("block_out_channels", (8, 16, 16, 16))
    return AutoencoderKL(block_out_channels=blocks, norm_num_groups=4, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), latent_channels=latent_channels,
                         **fields).eval()


def _video(seed=0, size=16):
    return np.random.default_rng(seed).uniform(-1, 1, (1, 2, size, size, 3)).astype(np.float32)


def _posterior_mean(ref, video):
    images = torch.from_numpy(video.reshape((-1,) + video.shape[2:]).transpose(0, 3, 1, 2))
    with torch.no_grad():
        return images, ref.encode(images).latent_dist.mean


def _nhwc_video(x, b, t):
    x = x.numpy().transpose(0, 2, 3, 1)
    return x.reshape((b, t) + x.shape[1:])


def _sdxl_pipeline_latents(ref, images):
    """diffusers' own SDXL img2img `prepare_latents` (latents_mean/std normalisation) on the posterior mean."""
    class MeanVae:  # `retrieve_latents` takes `.latents` when there is no `.latent_dist` to sample
        config = ref.config

        def encode(self, x):
            return types.SimpleNamespace(latents=ref.encode(x).latent_dist.mean)

        def to(self, *args, **kwargs):
            return self

    pipe = types.SimpleNamespace(vae=MeanVae())
    with torch.no_grad():
        return StableDiffusionXLImg2ImgPipeline.prepare_latents(
            pipe, images, None, images.shape[0], 1, torch.float32, "cpu", add_noise=False)


def test_latents_mean_std_normalise_as_the_sdxl_pipeline_does(tmp_path):
    mean, std = [0.1, -0.2, 0.3, 0.05], [0.9, 1.1, 0.7, 1.3]
    ref = _reference(4, latents_mean=mean, latents_std=std, scaling_factor=0.5)
    ref.save_pretrained(tmp_path)
    space = vae_space.load_vae_space(str(tmp_path), frame_chunk=0)
    video = _video()
    images, posterior = _posterior_mean(ref, video)
    latents = jax.jit(lambda v: space.encode(None, v))(video)
    np.testing.assert_allclose(np.asarray(latents), _nhwc_video(_sdxl_pipeline_latents(ref, images), 1, 2),
                               atol=ATOL, rtol=0)
    # Decoding: the SDXL pipeline's `latents * latents_std / scaling_factor + latents_mean`, then `vae.decode`.
    with torch.no_grad():
        want = ref.decode(posterior).sample
    np.testing.assert_allclose(np.asarray(space.decode(None, latents)), _nhwc_video(want, 1, 2), atol=ATOL, rtol=0)


def test_16_channel_shifted_vae_fp16_variant_matches_the_sd3_pipeline_formula(tmp_path):
    ref = _reference(16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5, shift_factor=0.1)
    ref.half().save_pretrained(tmp_path, variant="fp16")
    assert os.listdir(tmp_path) and "diffusion_pytorch_model.fp16.safetensors" in os.listdir(tmp_path)
    ref = AutoencoderKL.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float32).eval()
    space = vae_space.load_vae_space(str(tmp_path), frame_chunk=1)
    assert space.channels == 16
    video = _video(1)
    _, posterior = _posterior_mean(ref, video)
    latents = space.encode(None, video)
    # SD3 / FLUX pipelines: `(latents - shift_factor) * scaling_factor` on encode, the inverse before decode.
    np.testing.assert_allclose(np.asarray(latents), _nhwc_video((posterior - 0.1) * 1.5, 1, 2), atol=ATOL, rtol=0)
    with torch.no_grad():
        want = ref.decode(posterior).sample
    np.testing.assert_allclose(np.asarray(space.decode(None, latents)), _nhwc_video(want, 1, 2), atol=ATOL, rtol=0)


def test_16_channel_latents_mean_std_from_a_sharded_file(tmp_path):
    rng = np.random.default_rng(3)
    mean, std = rng.normal(size=16).round(3).tolist(), rng.uniform(0.5, 2, 16).round(3).tolist()
    ref = _reference(16, latents_mean=mean, latents_std=std, scaling_factor=0.7)
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "diffusion_pytorch_model.safetensors.index.json")
    space = vae_space.load_vae_space(str(tmp_path))
    video = _video(2)
    _, posterior = _posterior_mean(ref, video)
    view = lambda v: torch.tensor(v).view(1, 16, 1, 1)  # noqa: E731  (the pipelines' per-channel broadcast)
    want = (posterior - view(mean)) * 0.7 / view(std)
    latents = space.encode(None, video)
    np.testing.assert_allclose(np.asarray(latents), _nhwc_video(want, 1, 2), atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.asarray(space.model.config.denormalize(latents)), _nhwc_video(posterior, 1, 2),
                               atol=ATOL, rtol=0)


def test_config_omitting_fields_takes_diffusers_defaults(tmp_path):
    torch.manual_seed(0)
    AutoencoderKL().eval().save_pretrained(tmp_path)  # diffusers' defaults: one 64-channel block, 32 groups
    edit_config(tmp_path, drop=("block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
                                "norm_num_groups", "latent_channels", "scaling_factor", "use_quant_conv"))
    ref = AutoencoderKL.from_pretrained(tmp_path).eval()
    model, params = vae.load_autoencoder_kl(str(tmp_path))
    assert model.config.block_out_channels == tuple(ref.config.block_out_channels) == (64,)
    assert model.config.scaling_factor == ref.config.scaling_factor
    images = np.random.default_rng(0).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref.encode(torch.from_numpy(images)).latent_dist.mean.numpy().transpose(0, 2, 3, 1)
    got, _ = model.apply({"params": params}, images.transpose(0, 2, 3, 1), method=vae.AutoencoderKL.encode_moments)
    np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=0)


def test_vae_subfolder_of_a_hub_cache_pipeline_repository(tmp_path):
    ref = _reference(4, scaling_factor=0.13025)
    ref.save_pretrained(tmp_path / "src" / "vae")
    with open(tmp_path / "src" / "model_index.json", "w") as f:
        json.dump({"_class_name": "StableDiffusionXLPipeline", "vae": ["diffusers", "AutoencoderKL"]}, f)
    repo = as_hub_cache(tmp_path / "src" / "vae", tmp_path / "hub", repo="org/sdxl", subfolder="vae")
    os.rename(tmp_path / "src" / "model_index.json", os.path.join(repo, "snapshots", "0123456789abcdef",
                                                                   "model_index.json"))
    space = vae_space.load_vae_space(os.path.join(repo, "vae"))
    video = _video(4)
    _, posterior = _posterior_mean(ref, video)
    np.testing.assert_allclose(np.asarray(space.encode(None, video)), _nhwc_video(posterior * 0.13025, 1, 2),
                               atol=ATOL, rtol=0)
