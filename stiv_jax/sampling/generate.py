"""Text-to-video generation: classifier-free-guided velocity integrated from noise to data."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.diffusion.samplers import euler_sample
from stiv_jax.training.model_bundle import ModelBundle


def guided_velocity_fn(bundle: ModelBundle, params, ids, mask, null_ids, null_mask, cfg_scale: float):
    """``(x, t) -> v``: conditional and unconditional passes batched into one call, then CFG."""
    def velocity(x, t):
        both = bundle.velocity(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                               jnp.concatenate([ids, null_ids]), jnp.concatenate([mask, null_mask]))
        cond, uncond = jnp.split(both, 2)
        return uncond + cfg_scale * (cond - uncond)
    return velocity


def generate(bundle: ModelBundle, params, prompts: list[str], *, num_steps: int, cfg_scale: float,
             seed: int) -> np.ndarray:
    """Samples one video per prompt; returns uint8 ``[batch, frames, height, width, 3]``."""
    ids, mask = (jnp.asarray(a) for a in bundle.tokenize(prompts))
    null_ids, null_mask = (jnp.asarray(np.repeat(a, len(prompts), 0)) for a in bundle.tokenize([""]))
    noise = jax.random.normal(jax.random.key(seed), (len(prompts),) + bundle.latent_shape)

    @jax.jit
    def run(params, noise):
        fn = guided_velocity_fn(bundle, params, ids, mask, null_ids, null_mask, cfg_scale)
        latents = euler_sample(fn, noise, num_steps=num_steps)
        return bundle.latent_space.decode(None, latents)

    video = np.asarray(run(params, noise))
    return np.clip(np.round((video + 1.0) * 127.5), 0, 255).astype(np.uint8)
