"""Hierarchical long video (STIV paper: long video): key frames at a large stride, then interpolation of every interval.

Pass 1 samples ``N`` key frames (T2V, or TI2V from an image) with the frame-stride micro-condition set to the
key-frame stride. Pass 2 samples the ``N - 1`` intervals in one batch, each with its two bounding key frames
given first and last and the stride micro-condition at the data stride. The result concatenates the intervals:
``(N - 1) x N`` frames (the paper's count, (20 - 1) x 20 = 380); key frame ``i + 1`` ends interval ``i`` and
starts interval ``i + 1``.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stiv_jax.diffusion import tasks
from stiv_jax.sampling.generate import Generator, default_micro_conditions


def generate_long(gen: Generator, config, prompt: str, *, seed: int, image_latents: jnp.ndarray | None = None,
                  progress: bool = False) -> jnp.ndarray:
    """Latents ``[1, (frames - 1) * frames, height, width, channels]`` of one long video.

    Args:
      gen: the generator of the run.
      config: the run config (``data.frames``, ``data.frame_stride``, ``diffusion.long_keyframe_stride``).
      prompt: the text prompt.
      image_latents: optional ``[1, frames, height, width, channels]`` whose frame 0 is the first key frame.
    """
    frames = gen.bundle.latent_shape[0]
    key_mask = tasks.task_frame_mask("long_keyframe" if image_latents is not None else "t2v", frames)
    key_micro = default_micro_conditions(config, 1, frame_stride=config.diffusion.long_keyframe_stride)
    keys = gen.latents([prompt], micro=key_micro, seed=seed, clean=image_latents, frame_mask=key_mask,
                       progress="key frames" if progress else False)[0]
    intervals = frames - 1
    clean = jnp.zeros((intervals,) + keys.shape)
    clean = clean.at[:, 0].set(keys[:-1]).at[:, -1].set(keys[1:])
    mask = tasks.task_frame_mask("long_interpolate", frames)
    micro = default_micro_conditions(config, intervals)
    seeds = [seed + 7919 + i for i in range(intervals)]   # own noise per interval
    filled = gen.latents([prompt] * intervals, micro=micro, seed=seeds, clean=clean, frame_mask=mask,
                         progress="intervals" if progress else False)
    return filled.reshape((1, intervals * frames) + keys.shape[1:])


def keyframe_positions(frames: int) -> np.ndarray:
    """Indices of the long video's frames that are key frames (first and last frame of every interval)."""
    starts = np.arange(frames - 1) * frames
    return np.stack([starts, starts + frames - 1], axis=1)
