"""Resolution/duration buckets: each a fixed ``[batch, frames, height, width, 3]`` shape with its own batch size.

``config.data.buckets`` is a tuple of ``(frames, height, width, batch_size[, weight])`` (global batch sizes);
empty means one bucket ``(data.frames, data.resolution, data.resolution, data.batch_size)``. A clip goes to the
bucket whose aspect ratio is closest to its own among those it has enough frames for (larger buckets win ties);
images (``frames == 1``) go to ``config.data.image_buckets`` the same way. ``config.data.frame_strides`` mixes
temporal strides per sample (``frame_strides``): a clip joins a bucket when it has the frames of the smallest
stride, and each sample draws its stride among those its clip is long enough for. The pipeline gives each bucket its
own batch stream and interleaves the streams in proportion to their weights with grain's deterministic mix, so
every host emits the same bucket at the same step and each compiled shape always sees the same batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class Bucket:
    """One fixed batch shape. ``batch_size`` is global (all hosts together)."""

    frames: int
    height: int
    width: int
    batch_size: int
    weight: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"

    def host_batch_size(self, process_count: int) -> int:
        if self.batch_size % process_count:
            raise ValueError(f"bucket {self.name}: batch_size={self.batch_size} is not divisible by "
                             f"{process_count} processes; change config.data.buckets / config.data.batch_size")
        return self.batch_size // process_count

    def source_frames(self, stride: int) -> int:
        """Source frames one sample spans at ``stride``."""
        return (self.frames - 1) * stride + 1


def parse_buckets(entries: Sequence, *, what: str) -> list[Bucket]:
    """Buckets from config tuples ``(frames, height, width, batch_size[, weight])`` or dicts."""
    buckets = []
    for entry in entries:
        try:
            bucket = Bucket(**entry) if isinstance(entry, Mapping) else Bucket(*entry)
        except TypeError as e:
            raise ValueError(f"{what}: entry {entry!r} is not (frames, height, width, batch_size[, weight]): "
                             f"{e}") from e
        if min(bucket.frames, bucket.height, bucket.width, bucket.batch_size) < 1 or bucket.weight <= 0:
            raise ValueError(f"{what}: entry {entry!r} needs positive sizes and weight")
        buckets.append(bucket)
    names = [b.name for b in buckets]
    if len(set(names)) != len(names):
        raise ValueError(f"{what}: duplicate bucket shapes {names}")
    return buckets


def video_buckets(data_config) -> list[Bucket]:
    """The video buckets of ``config.data`` (see the module docstring)."""
    entries = data_config.buckets
    if not entries:
        return [Bucket(data_config.frames, data_config.resolution, data_config.resolution, data_config.batch_size)]
    return parse_buckets(entries, what="config.data.buckets")


def image_buckets(data_config) -> list[Bucket]:
    """The image buckets: ``config.data.image_buckets`` or one square bucket at ``data.resolution``."""
    entries = data_config.image_buckets
    if not entries:
        size = data_config.image_batch_size or data_config.batch_size
        return [Bucket(1, data_config.resolution, data_config.resolution, size)]
    buckets = parse_buckets(entries, what="config.data.image_buckets")
    if any(b.frames != 1 for b in buckets):
        raise ValueError(f"config.data.image_buckets must have frames == 1, got {[b.name for b in buckets]}")
    return buckets


def frame_strides(data_config) -> tuple[tuple[int, float], ...]:
    """``((stride, weight), ...)`` of ``config.data.frame_strides`` (weights normalised), or ``frame_stride``
    alone when it is empty. Entries are ``(stride, weight)`` pairs or bare strides (weight 1).

    Raises:
      ValueError: naming ``config.data.frame_strides`` for a stride below 1, a negative weight or no weight.
    """
    entries = data_config.frame_strides
    if not entries:
        return ((int(data_config.frame_stride), 1.0),)
    pairs = []
    for entry in entries:
        stride, weight = (entry, 1.0) if isinstance(entry, (int, float)) else tuple(entry)
        if int(stride) != stride or stride < 1 or weight < 0:
            raise ValueError(f"config.data.frame_strides: entry {entry!r} needs an integer stride >= 1 and a "
                             "weight >= 0")
        pairs.append((int(stride), float(weight)))
    total = sum(w for _, w in pairs)
    if total <= 0 or len({s for s, _ in pairs}) != len(pairs):
        raise ValueError(f"config.data.frame_strides={tuple(entries)!r}: needs distinct strides and a positive "
                         "total weight")
    return tuple((s, w / total) for s, w in pairs)


def assign_bucket(buckets: Sequence[Bucket], *, height: int, width: int, num_frames: int, stride: int = 1
                  ) -> int | None:
    """Index of the bucket for a ``height x width`` clip of ``num_frames`` frames, or None if none fits."""
    best, best_key = None, None
    aspect = math.log(height / width)
    for index, bucket in enumerate(buckets):
        if bucket.source_frames(stride) > num_frames:
            continue
        key = (abs(math.log(bucket.height / bucket.width) - aspect), -bucket.frames * bucket.height * bucket.width)
        if best_key is None or key < best_key:
            best, best_key = index, key
    return best
