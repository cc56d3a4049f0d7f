"""Tasks of one STIV model as conditioning-frame layouts, and the per-sample task sampler for joint training.

Every task is frame replacement (STIV paper: frame replacement and its applications): the frames a task gives are replaced by clean latents before
the model and excluded from the loss. Layouts, ``[frames]`` bool with True for a given frame:

  t2v               nothing given                                 ``. . . . . . . .``
  ti2v              frame 0 (the image)                           ``X . . . . . . .``
  predict           the first k frames (``predict_frames``, 4)    ``X X X X . . . .``
  interpolate       the first and the last frame                  ``X . . . . . . X``
  upsample          every other frame (temporal upsampling)       ``X . X . X . X .``
  multiview         frame 0 is the input view; the text is empty  ``X . . . . . . .``
  long_keyframe     key frames at a large stride: as ti2v (image dropout makes it T2V too)
  long_interpolate  between two key frames: first and last given, as interpolate

The ``long`` task picks its mode from the clip's frame-stride micro-condition: clips at a stride of at least
``long_keyframe_stride`` train the key-frame mode, others the interpolation mode. The stride micro-condition is
thereby always the clip's real stride, and the sampler switches it per mode (``stiv_jax.sampling.long_video``).
One run trains both modes from one source by mixing strides per sample (``config.data.frame_strides``, e.g.
``((1, 0.5), (19, 0.5))`` for 20 frames): the interval stride is ``long_interval_stride``, the one whose
``frames - 1`` gaps span exactly the key-frame stride.
"""
from __future__ import annotations

from typing import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

TASKS = ("t2v", "ti2v", "predict", "interpolate", "upsample", "multiview", "long")
LAYOUTS = ("t2v", "ti2v", "predict", "interpolate", "upsample", "multiview", "long_keyframe", "long_interpolate")
NULL_IMAGES = ("noisy", "zero")
FRAME_STRIDE_INDEX = 4   # micro_conditions columns: orig h, orig w, crop top, crop left, frame stride, frame count


def long_interval_stride(*, keyframe_stride: float, frames: int) -> int:
    """The frame stride that fills the gap between two key frames ``keyframe_stride`` source frames apart with
    ``frames`` frames, first and last on the key frames: ``keyframe_stride / (frames - 1)``.

    Raises:
      ValueError: naming ``config.diffusion.long_keyframe_stride`` and ``config.data.frames`` when the key-frame
        stride is not a whole multiple of ``frames - 1`` (no integer stride, hence no training clip, fills it).
    """
    gaps = frames - 1
    stride = keyframe_stride / gaps if gaps > 0 else 0.0
    if gaps < 1 or stride < 1 or stride != int(stride):
        raise ValueError(
            f"config.diffusion.long_keyframe_stride={keyframe_stride:g} with config.data.frames={frames}: an "
            f"interval of {frames} frames between key frames spans {gaps} gaps, so the key-frame stride must be "
            f"a whole multiple of {gaps} (e.g. {gaps} for consecutive frames, {2 * gaps} for stride 2)")
    return int(stride)


def task_frame_mask(layout: str, frames: int, *, predict_frames: int = 4) -> np.ndarray:
    """The documented conditioning layout of ``layout`` (a task or long-video mode): bool ``[frames]``."""
    mask = np.zeros((frames,), bool)
    if layout == "t2v":
        pass
    elif layout in ("ti2v", "multiview", "long_keyframe"):
        mask[0] = True
    elif layout == "predict":
        if not 0 < predict_frames < frames:
            raise ValueError(f"predict_frames={predict_frames} must be in [1, {frames - 1}] for {frames} frames")
        mask[:predict_frames] = True
    elif layout in ("interpolate", "long_interpolate"):
        if frames < 3:
            raise ValueError(f"interpolation needs at least 3 frames, got {frames}")
        mask[[0, -1]] = True
    elif layout == "upsample":
        if frames < 2:
            raise ValueError(f"temporal upsampling needs at least 2 frames, got {frames}")
        mask[::2] = True
    else:
        raise ValueError(f"unknown task {layout!r}; valid: {', '.join(LAYOUTS)}")
    return mask


def task_weights(weights: Mapping[str, float]) -> np.ndarray:
    """``config.diffusion.tasks`` (task -> weight) as a normalised ``[len(TASKS)]`` array; typos name the key."""
    unknown = sorted(set(weights) - set(TASKS))
    if unknown:
        raise ValueError(f"config.diffusion.tasks has unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
    w = np.array([float(weights.get(name, 0.0)) for name in TASKS])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"config.diffusion.tasks weights must be >= 0 with a positive sum, got {dict(weights)}")
    return w / w.sum()


@flax.struct.dataclass
class Conditioning:
    """Per-sample conditioning of a training batch.

    Attributes:
      frame_mask: ``[batch, frames]`` bool, True where the frame is replaced (and its loss masked).
      zero_image: ``[batch]`` bool, replace with zero latents instead of the clean ones (dropped image under
        ``null_image="zero"``).
      drop_text: ``[batch]`` bool, use the empty-string text encoding.
      layout: ``[batch]`` int32 index into ``LAYOUTS`` (for metrics and tests).
    """

    frame_mask: jnp.ndarray
    zero_image: jnp.ndarray
    drop_text: jnp.ndarray
    layout: jnp.ndarray

    def model_input(self, noisy: jnp.ndarray, clean: jnp.ndarray) -> jnp.ndarray:
        """Frame replacement on ``[batch, frames, height, width, channels]``: clean (or zero) given frames."""
        replacement = jnp.where(self.zero_image[:, None, None, None, None], 0.0, clean)
        return jnp.where(self.frame_mask[:, :, None, None, None], replacement, noisy)

    @property
    def loss_mask(self) -> jnp.ndarray:
        """``[batch, frames]`` float, 1 for the frames the loss is taken on."""
        return 1.0 - self.frame_mask.astype(jnp.float32)


class TaskSampler:
    """Draws a task, text dropout and image dropout independently for every sample (jittable ``__call__``).

    Args:
      frames: latent frames per clip.
      weights: task -> weight (``config.diffusion.tasks``).
      text_dropout: probability of the empty prompt (paper: 0.1); multiview always uses the empty prompt.
      image_dropout: probability of dropping the given frames (paper: 0.08), independent of the text drop.
      null_image: ``noisy`` (a dropped sample keeps its noisy frames and trains as T2V) or ``zero`` (the given
        frames become zero latents, as in the multi-view fine-tune).
      predict_frames: frames given in the prediction task.
      long_keyframe_stride: clips at this frame stride or more train the long-video key-frame mode.
    """

    def __init__(self, *, frames: int, weights: Mapping[str, float], text_dropout: float, image_dropout: float,
                 null_image: str = "noisy", predict_frames: int = 4, long_keyframe_stride: float = 20.0):
        if null_image not in NULL_IMAGES:
            raise ValueError(f"config.diffusion.null_image={null_image!r}; valid: {', '.join(NULL_IMAGES)}")
        for name, p in (("text_dropout", text_dropout), ("image_dropout", image_dropout)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"config.diffusion.{name}={p} is not a probability")
        self.frames = frames
        self.weights = task_weights(weights)
        self.text_dropout, self.image_dropout = float(text_dropout), float(image_dropout)
        self.null_image = null_image
        self.long_keyframe_stride = float(long_keyframe_stride)
        if self.weights[TASKS.index("long")] > 0:   # the key frames must be fillable by an interval of frames
            long_interval_stride(keyframe_stride=self.long_keyframe_stride, frames=frames)
        # Layouts of tasks with zero weight may not fit the clip (e.g. predict 4 of 2 frames); never drawn.
        self.layout_masks = np.stack([
            task_frame_mask(name, frames, predict_frames=predict_frames)
            if self.weights[TASKS.index(name if not name.startswith("long") else "long")] > 0
            else np.zeros((frames,), bool) for name in LAYOUTS])

    @classmethod
    def from_config(cls, diffusion_config, frames: int) -> "TaskSampler":
        d = diffusion_config
        return cls(frames=frames, weights=dict(d.tasks), text_dropout=d.text_dropout, image_dropout=d.image_dropout,
                   null_image=d.null_image, predict_frames=d.predict_frames,
                   long_keyframe_stride=d.long_keyframe_stride)

    def __call__(self, rng: jax.Array, batch: int, frame_stride: jnp.ndarray | None = None) -> Conditioning:
        """Conditioning for ``batch`` samples; ``frame_stride`` ``[batch]`` (micro-condition) picks long modes."""
        rng_task, rng_text, rng_image = jax.random.split(rng, 3)
        task = jax.random.categorical(rng_task, jnp.log(jnp.asarray(self.weights)), shape=(batch,))
        layout = task  # TASKS and LAYOUTS agree up to "long"
        long_task = TASKS.index("long")
        if frame_stride is None:
            frame_stride = jnp.zeros((batch,))
        keyframe = frame_stride >= self.long_keyframe_stride
        layout = jnp.where(task == long_task,
                           jnp.where(keyframe, LAYOUTS.index("long_keyframe"), LAYOUTS.index("long_interpolate")),
                           layout).astype(jnp.int32)
        frame_mask = jnp.asarray(self.layout_masks)[layout]
        drop_text = jax.random.bernoulli(rng_text, self.text_dropout, (batch,)) | (
            layout == LAYOUTS.index("multiview"))
        drop_image = jax.random.bernoulli(rng_image, self.image_dropout, (batch,)) & frame_mask.any(axis=1)
        if self.null_image == "noisy":
            frame_mask = frame_mask & ~drop_image[:, None]
            zero_image = jnp.zeros((batch,), bool)
        else:
            zero_image = drop_image
        return Conditioning(frame_mask=frame_mask, zero_image=zero_image, drop_text=drop_text, layout=layout)
