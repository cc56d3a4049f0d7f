"""Pretrained encoders placed on an 8-device mesh by their logical names compute what they compute unsharded."""
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import torch
import transformers
from diffusers import AutoencoderKL

from stiv_jax.encoders import clip_text, vae_space
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.parallel import rules as rules_lib


def _mesh():
    config = ml_collections.ConfigDict(dict(ici=dict(data=2, fsdp=2, context=1, tensor=2)))
    return mesh_lib.build_mesh(config), rules_lib.DEFAULT_LOGICAL_RULES


def test_clip_text_sharded_by_logical_names_matches_unsharded(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=8, eos_token_id=63)
    transformers.CLIPTextModel(cfg).save_pretrained(tmp_path)
    model, params = clip_text.load_clip_text(str(tmp_path))
    ids = np.random.default_rng(0).integers(0, 64, (4, 8)).astype(np.int32)
    mask = np.ones((4, 8), bool)
    want = model.apply({"params": params}, ids, mask)

    mesh, rules = _mesh()
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids, mask)["params"]
    specs = nn.get_partition_spec(abstract)
    shardings = mesh_lib.logical_to_sharding(specs, mesh, rules)
    with mesh_lib.activate(mesh, rules):
        sharded = jax.device_put(params, shardings)
        q_kernel = sharded["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"]
        assert tuple(q_kernel.sharding.spec) == ("fsdp", "tensor")  # embed -> fsdp, heads -> tensor
        batch = mesh_lib.batch_sharding(mesh, rules, 2)
        got = jax.jit(model.apply)({"params": sharded}, jax.device_put(ids, batch), jax.device_put(mask, batch))

    np.testing.assert_allclose(np.asarray(got.sequence), np.asarray(want.sequence), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got.pooled), np.asarray(want.pooled), atol=1e-5)


def test_vae_space_under_a_mesh_matches_unsharded(tmp_path):
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  latent_channels=8).save_pretrained(tmp_path)
    space = vae_space.load_vae_space(str(tmp_path), frame_chunk=8)
    video = np.random.default_rng(0).uniform(-1, 1, (4, 4, 16, 16, 3)).astype(np.float32)
    want = jax.jit(lambda v: space.encode(None, v))(video)
    mesh, rules = _mesh()
    with mesh_lib.activate(mesh, rules):
        video_sharded = jax.device_put(video, mesh_lib.batch_sharding(mesh, rules, 5))
        got = jax.jit(lambda v: space.encode(None, v))(video_sharded)
    assert tuple(got.sharding.spec)[0] == ("data", "fsdp")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
