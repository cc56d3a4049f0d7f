"""3D patch embedding: an inflated T2I kernel embeds a static video exactly as the T2I model embeds its frame."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiv_jax.model.config import DiTConfig
from stiv_jax.model.embed import PatchEmbed, inflate_patch_embed
from numerics import assert_close


def embed_config(temporal_patch):
    return DiTConfig.from_config(dict(size="tiny", latent_channels=3, text_dim=8, temporal_patch=temporal_patch))


@pytest.mark.parametrize("temporal_patch", [2, 4])
def test_inflated_patch_embed_on_static_video_equals_t2i_embed(temporal_patch):
    frame = jax.random.normal(jax.random.key(0), (2, 1, 6, 4, 3))
    t2i = PatchEmbed(embed_config(1))
    params = nn.unbox(jax.jit(t2i.init)(jax.random.key(1), frame)["params"])
    params = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape), params)  # bias != 0
    t2i_tokens = jax.jit(t2i.apply)({"params": params}, frame)                    # [2, 1, 6, width]

    video_model = PatchEmbed(embed_config(temporal_patch))
    embed = jax.jit(video_model.apply)
    inflated = inflate_patch_embed(params, temporal_patch)
    assert inflated["proj"]["kernel"].shape == (temporal_patch,) + params["proj"]["kernel"].shape[1:]
    static = jnp.repeat(frame, 2 * temporal_patch, axis=1)                   # 2 temporal tokens
    tokens = embed({"params": inflated}, static)
    assert tokens.shape == (2, 2, 6, 64)
    for t in range(2):
        assert_close(tokens[:, t], t2i_tokens[:, 0], ulps=64)   # a conv summed over temporal_patch frames
    # An image (one frame) through the video model is the same static video.
    assert_close(embed({"params": inflated}, frame)[:, 0], t2i_tokens[:, 0], ulps=64)
    # A moving video is not embedded like its first frame (the test can fail).
    moving = static.at[:, 1].add(1.0)
    assert not np.allclose(embed({"params": inflated}, moving)[:, 0], t2i_tokens[:, 0], atol=1e-3)


def test_inflate_accepts_the_full_dit_tree_and_rejects_video_kernels():
    kernel = jnp.ones((1, 2, 2, 3, 8))
    tree = {"patch_embed": {"proj": {"kernel": kernel, "bias": jnp.zeros(8)}}, "final_proj": {"kernel": 1}}
    out = inflate_patch_embed(tree, 2)
    assert out["patch_embed"]["proj"]["kernel"].shape == (2, 2, 2, 3, 8) and out["final_proj"] == {"kernel": 1}
    np.testing.assert_allclose(out["patch_embed"]["proj"]["kernel"], 0.5)
    with pytest.raises(ValueError, match="T2I kernel"):
        inflate_patch_embed(out, 2)
