"""The temporal-upsampler cascade (STIV paper: "M-512 SFT + TUP"): a main run's video, then a TUP run doubling
its frame rate.

The TUP model (``experiments/temporal_upsampler.py``) is trained on ``N``-frame clips whose even frames are given
(``tasks.task_frame_mask('upsample', N)``: ``X . X . ...``) and generates the odd ones. To double a video of ``F``
frames, its frames are cut into windows of ``N / 2`` consecutive frames (the last window padded by repeating the
last frame), each window laid on the even positions of one TUP clip, and the windows are sampled in one batch
with their own noise. The result holds ``2 F`` frames: the input frames, unchanged, at the even positions (they
are written back in pixels, so a lossy VAE round trip does not touch the main model's frames) and the TUP's
frames between them (the last one follows the last input frame).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from stiv_jax.diffusion import tasks
from stiv_jax.sampling.generate import Generator, default_micro_conditions


def upsample_video(gen: Generator, config, video: np.ndarray, prompt: str, *, seed: int,
                   progress: bool = False) -> np.ndarray:
    """uint8 ``[2 * frames, resolution, resolution, 3]``: ``video`` at twice its frame rate.

    Args:
      gen: the generator of the TUP run.
      config: the TUP run's config (``data.frames``, ``data.resolution``).
      video: uint8 ``[frames, height, width, 3]`` (e.g. a T2V sample of the main model); resized to the TUP's
        square resolution when it differs.
      prompt: the text prompt (the TUP is text-conditioned, as in the paper's best setting).
      seed: noise seed of window 0 (window ``i`` uses ``seed + i``).
    """
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8 or len(video) < 1:
        raise ValueError(f"expected a uint8 video [frames, height, width, 3], got {video.dtype} {video.shape}")
    clip_frames, res = int(config.data.frames), int(config.data.resolution)
    if clip_frames % 2:
        raise ValueError(f"the TUP run's clips have {clip_frames} frames; the cascade needs an even count")
    given = tasks.task_frame_mask("upsample", clip_frames)   # the even frames
    if video.shape[1:3] != (res, res):
        video = np.stack([np.asarray(Image.fromarray(f).resize((res, res), Image.BILINEAR)) for f in video])
    per_window = clip_frames // 2
    windows = -(-len(video) // per_window)
    padded = np.concatenate([video, np.repeat(video[-1:], windows * per_window - len(video), axis=0)])
    clips = np.zeros((windows, clip_frames, res, res, 3), np.uint8)
    clips[:, given] = padded.reshape((windows, per_window, res, res, 3))
    latents = gen.latents([prompt] * windows, micro=default_micro_conditions(config, windows),
                          seed=[seed + i for i in range(windows)], clean=gen.encode(clips), frame_mask=given,
                          progress="upsampling" if progress else False)
    out = gen.to_uint8(latents).reshape((windows * clip_frames, res, res, 3))[:2 * len(video)].copy()
    out[0::2] = video
    return out
