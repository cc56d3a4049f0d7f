"""The grain training pipeline: ArrayRecord clip shards -> decoded, augmented, tokenized, batched numpy.

Order: source -> per-host slice -> shuffle(seed) -> repeat -> decode (PyAV, only the needed frames) ->
temporal sampling at a stride -> resize + crop (micro-conditions recorded) -> tokenize -> batch.
"""
from __future__ import annotations

import glob
import os
from typing import Callable

import grain
import numpy as np
from absl import logging

from stiv_jax.data import schema, video_io

Tokenizer = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]


def shard_paths(pattern: str) -> list[str]:
    """ArrayRecord shard files of a directory or glob, sorted; errors name the config key."""
    paths = sorted(glob.glob(os.path.join(pattern, "*.array_record")) if os.path.isdir(pattern)
                   else glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"config.data.shards={pattern!r} matches no .array_record files")
    return paths


class ClipDecoder:
    """Turns one serialised clip record into training arrays (a grain ``RandomMap`` callable)."""

    def __init__(self, data_config, tokenize: Tokenizer):
        self.frames = data_config.frames
        self.stride = data_config.frame_stride
        self.resolution = data_config.resolution
        self.random_crop = data_config.random_crop
        self.tokenize = tokenize

    def __call__(self, record_bytes: bytes, rng: np.random.Generator) -> dict:
        record = schema.decode_record(record_bytes)
        meta = record["meta"]
        needed = (self.frames - 1) * self.stride + 1
        available = int(meta["num_frames"])
        if available < needed:
            raise video_io.VideoDecodeError(f"clip of {meta['source']} has {available} frames, {needed} needed")
        start = int(rng.integers(0, available - needed + 1)) if self.random_crop else (available - needed) // 2
        h, w, res = int(meta["height"]), int(meta["width"]), self.resolution
        scale = res / min(h, w)
        rh, rw = max(res, int(round(h * scale))), max(res, int(round(w * scale)))
        frames = video_io.decode_frames(record["video"], start_frame=start, num_frames=self.frames,
                                        stride=self.stride, size=(rh, rw))
        if self.random_crop:
            top, left = int(rng.integers(0, rh - res + 1)), int(rng.integers(0, rw - res + 1))
        else:
            top, left = (rh - res) // 2, (rw - res) // 2
        frames = frames[:, top:top + res, left:left + res]
        ids, mask = self.tokenize([record["caption"]])
        micro = np.array([h, w, top / scale, left / scale, self.stride, self.frames], np.float32)
        return dict(video=frames, text_ids=ids[0], text_mask=mask[0], micro_conditions=micro)


def make_dataset(data_config, *, seed: int, tokenize: Tokenizer, process_index: int = 0,
                 process_count: int = 1) -> grain.MapDataset:
    """The per-host batched ``MapDataset`` (infinite).

    ``config.data.batch_size`` is the global batch; each of ``process_count`` hosts yields its share
    ``[batch_size / process_count, frames, resolution, resolution, 3]`` uint8 videos.
    """
    if data_config.batch_size % process_count:
        raise ValueError(f"config.data.batch_size={data_config.batch_size} is not divisible by "
                         f"{process_count} processes")
    source = grain.sources.ArrayRecordDataSource(shard_paths(data_config.shards))
    ds = grain.MapDataset.source(source)[process_index::process_count]
    ds = ds.shuffle(seed=seed).repeat()
    ds = ds.random_map(ClipDecoder(data_config, tokenize), seed=seed)
    return ds.batch(data_config.batch_size // process_count, drop_remainder=True)


def make_iterator(data_config, *, seed: int, tokenize: Tokenizer, process_index: int = 0,
                  process_count: int = 1) -> grain.DatasetIterator:
    """A checkpointable iterator (``get_state`` / ``set_state``) over host batches, with thread prefetch."""
    ds = make_dataset(data_config, seed=seed, tokenize=tokenize, process_index=process_index,
                      process_count=process_count)
    read = grain.ReadOptions(num_threads=data_config.num_threads, prefetch_buffer_size=data_config.prefetch)
    logging.info("data: %s, batch %d", data_config.shards, data_config.batch_size)
    return iter(ds.to_iter_dataset(read))
