"""Hierarchical long video (STIV paper: long video): key frames at a large stride, then interpolation of every interval.

Pass 1 samples ``N`` key frames (T2V, or TI2V from an image) with the frame-stride micro-condition set to the
key-frame stride ``K`` (``config.diffusion.long_keyframe_stride``). Pass 2 samples the ``N - 1`` intervals in one
batch, each with its two bounding key frames given first and last and the stride micro-condition at the stride
whose ``N - 1`` gaps span exactly ``K`` source frames (``tasks.long_interval_stride``: ``K / (N - 1)``), so the
model is told the spacing its key frames really have. Consecutive intervals share a key frame; the assembled
video holds it once: ``(N - 1) x (N - 1) + 1`` frames (361 for 20-frame clips, the paper's (20 - 1) x 20 = 380
counted without the shared frames), key frame ``k`` at frame ``k x (N - 1)``.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stiv_jax.diffusion import tasks
from stiv_jax.sampling.generate import Generator, default_micro_conditions


def interval_stride(config, frames: int) -> int:
    """The stride micro-condition of the interval pass (see the module docstring)."""
    return tasks.long_interval_stride(keyframe_stride=float(config.diffusion.long_keyframe_stride), frames=frames)


def generate_long(gen: Generator, config, prompt: str, *, seed: int, image_latents: jnp.ndarray | None = None,
                  progress: bool = False) -> jnp.ndarray:
    """Latents ``[1, (frames - 1) ** 2 + 1, height, width, channels]`` of one long video.

    Args:
      gen: the generator of the run.
      config: the run config (``diffusion.long_keyframe_stride``; the interval stride follows from it).
      prompt: the text prompt.
      image_latents: optional ``[1, frames, height, width, channels]`` whose frame 0 is the first key frame.
    """
    frames = gen.bundle.latent_shape[0]
    stride = interval_stride(config, frames)   # refuses key frames no interval can fill, before sampling
    key_mask = tasks.task_frame_mask("long_keyframe" if image_latents is not None else "t2v", frames)
    key_micro = default_micro_conditions(config, 1, frame_stride=config.diffusion.long_keyframe_stride)
    keys = gen.latents([prompt], micro=key_micro, seed=seed, clean=image_latents, frame_mask=key_mask,
                       progress="key frames" if progress else False)[0]
    intervals = frames - 1
    clean = jnp.zeros((intervals,) + keys.shape)
    clean = clean.at[:, 0].set(keys[:-1]).at[:, -1].set(keys[1:])
    mask = tasks.task_frame_mask("long_interpolate", frames)
    micro = default_micro_conditions(config, intervals, frame_stride=stride)
    seeds = [seed + 7919 + i for i in range(intervals)]   # own noise per interval
    filled = gen.latents([prompt] * intervals, micro=micro, seed=seeds, clean=clean, frame_mask=mask,
                         progress="intervals" if progress else False)
    # Interval i ends on key frame i + 1, which interval i + 1 starts with: keep it once.
    video = jnp.concatenate([filled[0]] + [filled[i, 1:] for i in range(1, intervals)], axis=0)
    return video[None]


def keyframe_positions(frames: int) -> np.ndarray:
    """``[frames]`` indices of the key frames in the assembled long video of ``frames``-frame clips."""
    return np.arange(frames) * (frames - 1)
