"""Per-record work of the training pipeline: parse + bucket tagging, then decode + augment into numpy examples.

All callables here are picklable (they run in grain worker processes). A record that cannot be parsed or decoded
becomes ``{"_skipped": "<source or record id>: <why>"}`` instead of raising, so the batcher can drop and count
it; a corrupt record never stops a run.

Example fields (one record; the batcher stacks them):
  video             uint8   [frames, height, width, 3]   (pixel path; frames == 1 for images)
  latents           stored dtype [latent_frames, latent_height, latent_width, latent_channels] (latent path)
  text_embeddings   [text_length, text_dim], text_mask bool [text_length], pooled_text [text_dim] (latent path,
                    when the record has them)
  caption           str     (turned into ``text_ids``/``text_mask`` by the tokenizer in the main process)
  micro_conditions  float32 [6]: original height, original width, crop top, crop left (original pixels),
                    frame stride, frames; the original size is the source video's (``source_height`` /
                  ``source_width`` in the record's meta) when the shard builder resized it
  fps               float32 [] frames per second after the stride
  record_id         int32   [] index of the record in its source (debugging, coverage checks)
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

from stiv_jax.data import schema, video_io
from stiv_jax.data.buckets import Bucket, assign_bucket

SKIPPED = "_skipped"


class ParseAndTag:
    """``(record_id, bytes) -> (bucket_index | None | -1, record_id, bytes)``; -1 marks an unreadable record.

    Only the record's metadata is read; the video stays encoded.
    """

    def __init__(self, kind: str, buckets: Sequence[Bucket], stride: int):
        self.kind, self.buckets, self.stride = kind, list(buckets), stride

    def __call__(self, item):
        record_id, data = item
        try:
            kind, meta = schema.record_kind(data)
            if kind != self.kind:
                raise schema.RecordError(f"a {kind!r} record in a {self.kind!r} source")
            if kind == "latent":
                bucket = _exact_bucket(self.buckets, meta)
            else:
                bucket = assign_bucket(self.buckets, height=int(meta["height"]), width=int(meta["width"]),
                                       num_frames=int(meta.get("num_frames", 1)), stride=self.stride)
        except (schema.RecordError, KeyError, TypeError, ValueError, ZeroDivisionError):
            bucket = -1
        return bucket, record_id, data


def _exact_bucket(buckets, meta) -> int | None:
    for index, b in enumerate(buckets):
        if (b.frames, b.height, b.width) == (int(meta["num_frames"]), int(meta["height"]), int(meta["width"])):
            return index
    return None


def resize_crop_plan(height: int, width: int, out_h: int, out_w: int, rng: np.random.Generator | None
                     ) -> tuple[tuple[int, int], tuple[int, int], float]:
    """Resize size ``(rh, rw)`` covering ``out_h x out_w`` at one scale, crop ``(top, left)`` and the scale.

    ``rng`` None: center crop.
    """
    scale = max(out_h / height, out_w / width)
    rh, rw = max(out_h, int(round(height * scale))), max(out_w, int(round(width * scale)))
    if rng is None:
        top, left = (rh - out_h) // 2, (rw - out_w) // 2
    else:
        top, left = int(rng.integers(0, rh - out_h + 1)), int(rng.integers(0, rw - out_w + 1))
    return (rh, rw), (top, left), scale


def crop_window_plan(height: int, width: int, out_h: int, out_w: int, rng: np.random.Generator | None
                     ) -> tuple[int, int, int, int]:
    """The source window ``(top, left, height, width)`` that, resized by one scale, covers ``out_h x out_w``;
    ``rng`` None: center crop.

    Offsets and window sides are even where the source allows, so a 4:2:0 frame is cropped on its chroma grid
    (``frames.crop_resize_rgb`` then never converts the whole frame).
    """
    scale = max(out_h / height, out_w / width)
    win_h, win_w = min(height, int(round(out_h / scale))), min(width, int(round(out_w / scale)))
    win_h, win_w = (win_h - win_h % 2) or win_h, (win_w - win_w % 2) or win_w
    if rng is None:
        top, left = (height - win_h) // 2, (width - win_w) // 2
    else:
        top, left = int(rng.integers(0, height - win_h + 1)), int(rng.integers(0, width - win_w + 1))
    return top - top % 2, left - left % 2, win_h, win_w


class ClipDecoder:
    """Decodes a tagged clip record into a fixed-shape example for its bucket (a grain ``RandomMap`` callable).

    Temporal crop: ``bucket.frames`` frames at a stride drawn by weight from ``strides`` (``(stride, weight)``
    pairs, ``buckets.frame_strides``) among those the clip is long enough for, from a random (or centered) start;
    PyAV seeks to the keyframe before the start and decodes only what the kept frames need
    (``video_io.decode_frames``). Spatial: the window that covers the bucket at one scale (random or centered,
    ``crop_window_plan``) is cropped first, then resized on uint8; the original size, crop offsets and the
    sample's stride are recorded as micro-conditions.
    """

    def __init__(self, buckets: Sequence[Bucket], *, strides: Sequence[tuple[int, float]], random_crop: bool,
                 threads: int = 1):
        self.buckets, self.random_crop, self.threads = list(buckets), random_crop, threads
        self.strides = tuple((int(s), float(w)) for s, w in strides)

    def pick_stride(self, bucket: Bucket, available: int, rng: np.random.Generator) -> int:
        """A stride of ``self.strides`` that ``available`` frames hold, drawn by weight (without ``random_crop``:
        the heaviest one that fits, the smaller on ties)."""
        fits = [(s, w) for s, w in self.strides if bucket.source_frames(s) <= available and w > 0]
        if not fits:
            smallest = min(s for s, _ in self.strides)
            raise video_io.VideoDecodeError(f"{available} frames, {bucket.source_frames(smallest)} needed")
        if not self.random_crop or len(fits) == 1:
            return max(fits, key=lambda p: (p[1], -p[0]))[0]
        weights = np.asarray([w for _, w in fits])
        return fits[int(rng.choice(len(fits), p=weights / weights.sum()))][0]

    def __call__(self, item, rng: np.random.Generator) -> dict:
        bucket_index, record_id, data = item
        name = f"record {record_id}"
        try:
            record = schema.decode_record(data)
            meta = record["meta"]
            name = f"record {record_id} ({meta['source']} @ {float(meta['start_sec']):.2f}s)"
            bucket = self.buckets[bucket_index]
            available = int(meta["num_frames"])
            stride = self.pick_stride(bucket, available, rng)
            needed = bucket.source_frames(stride)
            span = available - needed
            if not meta.get("temporal_crop", True):   # frame order fixed from frame 0 (multi-view records)
                span = 0
            start = int(rng.integers(0, span + 1)) if self.random_crop else span // 2
            h, w = int(meta["height"]), int(meta["width"])
            window = crop_window_plan(h, w, bucket.height, bucket.width, rng if self.random_crop else None)
            video = video_io.decode_frames(record["video"], start_frame=start, num_frames=bucket.frames,
                                           stride=stride, crop=window, size=(bucket.height, bucket.width),
                                           threads=self.threads)
        except (video_io.VideoDecodeError, schema.RecordError, KeyError, TypeError, ValueError) as e:
            return {SKIPPED: f"{name}: {e}"}
        micro = source_micro_conditions(meta, crop_top=window[0], crop_left=window[1], stride=stride,
                                        frames=bucket.frames)
        return dict(video=video, caption=record["caption"], micro_conditions=micro,
                    fps=np.float32(float(meta["fps"]) / stride), record_id=np.int32(record_id))


def source_micro_conditions(meta, *, crop_top: float, crop_left: float, stride: float, frames: int) -> np.ndarray:
    """float32 ``[6]`` micro-conditions of a clip cropped at ``(crop_top, crop_left)`` stored pixels: the source
    video's size (``meta`` source_height/source_width, else the stored size) and the crop offsets scaled to it."""
    h, w = int(meta["height"]), int(meta["width"])
    source_h, source_w = int(meta.get("source_height", h)), int(meta.get("source_width", w))
    return np.array([source_h, source_w, crop_top * source_h / h, crop_left * source_w / w, stride, frames],
                    np.float32)


class ImageDecoder:
    """Decodes a tagged image record into ``video`` ``[1, height, width, 3]`` for its (image) bucket."""

    def __init__(self, buckets: Sequence[Bucket], *, random_crop: bool):
        self.buckets, self.random_crop = list(buckets), random_crop

    def __call__(self, item, rng: np.random.Generator) -> dict:
        bucket_index, record_id, data = item
        name = f"record {record_id}"
        try:
            record = schema.decode_image_record(data)
            name = f"record {record_id} ({record['meta']['source']})"
            bucket = self.buckets[bucket_index]
            with Image.open(io.BytesIO(record["image"])) as image:
                image = image.convert("RGB")
                h, w = image.height, image.width
                (rh, rw), (top, left), scale = resize_crop_plan(h, w, bucket.height, bucket.width,
                                                                rng if self.random_crop else None)
                pixels = np.asarray(image.resize((rw, rh), Image.BILINEAR))
        except (OSError, schema.RecordError, KeyError, TypeError, ValueError, Image.DecompressionBombError) as e:
            return {SKIPPED: f"{name}: {e}"}
        video = np.ascontiguousarray(pixels[None, top:top + bucket.height, left:left + bucket.width])
        micro = np.array([h, w, top / scale, left / scale, 1, 1], np.float32)
        return dict(video=video, caption=record["caption"], micro_conditions=micro, fps=np.float32(0.0),
                    record_id=np.int32(record_id))


class LatentDecoder:
    """Reads a tagged latent record: precomputed ``latents`` (+ text embeddings when stored), no pixels.

    ``expected_shapes[bucket_index]`` = tensor name -> shape every record of that bucket must have (the most
    common shapes found at start-up); a record with other shapes is skipped and counted.
    """

    def __init__(self, buckets: Sequence[Bucket], expected_shapes: dict[int, dict] | None = None):
        self.buckets = list(buckets)
        self.expected_shapes = expected_shapes or {}

    def __call__(self, item, rng: np.random.Generator) -> dict:
        del rng
        bucket_index, record_id, data = item
        name = f"record {record_id}"
        try:
            record = schema.decode_latent_record(data)
            meta = record["meta"]
            name = f"record {record_id} ({meta['source']} @ {float(meta['start_sec']):.2f}s)"
            tensors = record["tensors"]
            shapes = {k: v.shape for k, v in tensors.items()}
            expected = self.expected_shapes.get(bucket_index)
            if expected is not None and shapes != expected:
                raise schema.RecordError(f"tensor shapes {shapes} differ from the bucket's {expected}")
            micro = np.array([meta.get("source_height", meta["height"]), meta.get("source_width", meta["width"]),
                              meta.get("crop_top", 0), meta.get("crop_left", 0), meta["frame_stride"],
                              meta["num_frames"]], np.float32)
            example = dict(latents=tensors["video_latents"], caption=record["caption"], micro_conditions=micro,
                           fps=np.float32(float(meta["fps"]) / float(meta["frame_stride"])),
                           record_id=np.int32(record_id))
        except (schema.RecordError, KeyError, TypeError, ValueError) as e:
            return {SKIPPED: f"{name}: {e}"}
        for key in ("text_embeddings", "text_mask", "pooled_text", "first_frame_latents"):
            if key in tensors:
                example[key] = tensors[key]
        return example
