"""Given images and videos for conditioned tasks: loaded at the run's resolution, laid out as a clip.

Images and videos are resized (shorter side to ``config.data.resolution``) and center-cropped, the same
geometry as the training pipeline's center crop; videos are read at ``config.data.frame_stride``.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from stiv_jax.data import video_io
from stiv_jax.sampling.generate import given_frames

IMAGE_TASKS = ("ti2v", "multiview", "long")   # frame 0 from --image (or the first frame of --video)
VIDEO_TASKS = ("predict", "interpolate", "upsample")
SAMPLING_TASKS = ("t2v",) + IMAGE_TASKS + VIDEO_TASKS


def _resize_crop(image: Image.Image, resolution: int) -> np.ndarray:
    scale = resolution / min(image.size)
    w, h = max(resolution, round(image.size[0] * scale)), max(resolution, round(image.size[1] * scale))
    image = image.convert("RGB").resize((w, h), Image.BILINEAR)
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return np.asarray(image)[top:top + resolution, left:left + resolution]


def load_image(path: str, resolution: int) -> np.ndarray:
    """uint8 ``[resolution, resolution, 3]`` from an image file."""
    try:
        with Image.open(path) as image:
            return _resize_crop(image, resolution)
    except OSError as e:
        raise ValueError(f"--image={path!r} cannot be read as an image: {e}") from e


def load_video(path: str, *, frames: int, stride: int, resolution: int) -> np.ndarray:
    """uint8 ``[frames, resolution, resolution, 3]``: the first ``frames`` frames at ``stride``."""
    try:
        clip = video_io.decode_frames(path, num_frames=frames, stride=stride)
    except video_io.VideoDecodeError as e:
        raise ValueError(f"--video={path!r}: {e} (the task needs {frames} frames at stride {stride})") from e
    return np.stack([_resize_crop(Image.fromarray(f), resolution) for f in clip])


def task_clip(task: str, config, *, image: str | None = None, video: str | None = None,
              ) -> tuple[np.ndarray | None, np.ndarray]:
    """The given pixel clip and frame layout of a sampling task.

    Returns:
      ``(clip, frame_mask)``: uint8 ``[frames, resolution, resolution, 3]`` (None for T2V, or ``long`` without an
      image) whose ``frame_mask`` frames are given; ``frame_mask`` bool ``[frames]``.
    """
    frames, res, stride = config.data.frames, config.data.resolution, config.data.frame_stride
    if task not in SAMPLING_TASKS:
        raise ValueError(f"--task={task!r}; valid: {', '.join(SAMPLING_TASKS)}")
    if task == "t2v":
        return None, np.zeros((frames,), bool)
    if task in IMAGE_TASKS:
        if image is None and video is None:
            if task == "long":
                return None, np.zeros((frames,), bool)
            raise ValueError(f"--task={task} needs --image=PNG (or --video, whose first frame is used)")
        first = (load_image(image, res) if image is not None
                 else load_video(video, frames=1, stride=1, resolution=res)[0])
        clip = np.zeros((frames, res, res, 3), np.uint8)
        clip[0] = first
        layout = "long_keyframe" if task == "long" else task
        return clip, given_frames(layout, frames)
    if video is None:
        raise ValueError(f"--task={task} needs --video=MP4 ({frames} frames at stride {stride} are read)")
    clip = load_video(video, frames=frames, stride=stride, resolution=res)
    return clip, given_frames(task, frames, predict_frames=config.diffusion.predict_frames)
