r"""Precompute job: pixel clip shards -> latent shards (VAE latents + text embeddings), resumable.

  python -m stiv_jax.data.encode --shards=runs/demo_data --out=runs/demo_latents --config=experiments/demo.py

Each input shard `clips-*.array_record` (sorted; index i of n) becomes `latents-0000i-of-0000n.array_record` of
latent records (`schema.encode_latent_record`), in the input's record order. Hosts take every
`process_count`-th input shard; on a host, each batch of clips is split over the local devices (data parallel).

Geometry follows `config.data` (one bucket): `frames` frames at `frame_stride` from the middle of each clip, short
side resized to `resolution` and center-cropped square (clips too short are skipped and counted); latents come
from `config.latent` (`pixels` or `vae`). With a pretrained text encoder
(`config.text.kind` clip/t5/bert) the caption's `text_embeddings [len, dim]`, `text_mask [len]` and `pooled_text
[dim]` are stored; a trainable one (`token_embedding`) stores none (training tokenizes the caption itself).

Resume: a shard is complete once `<name>.done.json` exists; it is written (atomically) only after the shard file was
renamed into place from `<name>.tmp`. A killed run leaves at most a stale `.tmp`, which the next run discards and
redoes, so a resumed run writes exactly the records an uninterrupted one does: no duplicates, no gaps. Clips that
fail to decode are skipped and counted in the marker.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from array_record.python import array_record_module
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from stiv_jax.data import decoders, schema, video_io
from stiv_jax.encoders.latent import build_latent_space
from stiv_jax.encoders.pretrained import require_checkpoints
from stiv_jax.encoders.text import build_text_encoder


def input_shards(shards: str) -> list[str]:
    """The pixel shards of a directory (`*.array_record`, sorted) or a glob."""
    paths = sorted(glob.glob(os.path.join(shards, "*.array_record")) if os.path.isdir(shards) else glob.glob(shards))
    paths = [p for p in paths if not os.path.basename(p).startswith("latents-")]
    if not paths:
        raise FileNotFoundError(f"--shards={shards!r} matches no .array_record files")
    return paths


def output_name(index: int, count: int) -> str:
    return f"latents-{index:05d}-of-{count:05d}.array_record"


def read_records(path: str) -> list[bytes]:
    reader = array_record_module.ArrayRecordReader(path)
    try:
        return list(reader.read_all())
    finally:
        reader.close()


def prepare_clip(data: bytes, *, frames: int, frame_stride: int, resolution: int
                 ) -> tuple[np.ndarray, str, dict]:
    """Decodes a clip record into uint8 `[frames, resolution, resolution, 3]`, its caption and latent meta.

    The `frames` frames at `frame_stride` are taken from the middle of the clip and the short side is resized to
    `resolution`, then center-cropped: the geometry of the pixel pipeline without random crops, so the records
    land in the `(frames, resolution, resolution)` bucket of `config.data`.
    """
    record = schema.decode_record(data)
    meta = record["meta"]
    available = int(meta["num_frames"])
    needed = (frames - 1) * frame_stride + 1
    if available < needed:
        raise video_io.VideoDecodeError(f"clip of {meta['source']} has {available} frames, {needed} needed for "
                                        f"config.data.frames={frames} at frame_stride={frame_stride}")
    start = (available - needed) // 2
    h, w = int(meta["height"]), int(meta["width"])
    top, left, win_h, win_w = decoders.crop_window_plan(h, w, resolution, resolution, None)
    video = video_io.decode_frames(record["video"], start_frame=start, num_frames=frames, stride=frame_stride,
                                   crop=(top, left, win_h, win_w), size=(resolution, resolution))
    fps = float(meta["fps"])
    source_h, source_w, crop_top, crop_left = decoders.source_micro_conditions(
        meta, crop_top=top, crop_left=left, stride=frame_stride, frames=frames)[:4].tolist()
    latent_meta = dict(source=meta["source"], start_sec=float(meta["start_sec"]) + start / fps,
                       end_sec=float(meta["start_sec"]) + (start + needed) / fps, fps=fps, num_frames=frames,
                       height=resolution, width=resolution, frame_stride=frame_stride, source_height=int(source_h),
                       source_width=int(source_w), crop_top=crop_top, crop_left=crop_left)
    return video, record["caption"], latent_meta


class DeviceEncoder:
    """Jitted latent + text encoding of host batches, split over this host's local devices."""

    def __init__(self, config, *, batch_size: int, dtype: str = "float32"):
        require_checkpoints(config)   # one error naming every missing encoder path
        self.latent_space = build_latent_space(config.latent)
        self.text_encoder = build_text_encoder(config.text)
        self.pretrained_text = self.text_encoder.pretrained_params is not None
        devices = jax.local_devices()
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        self.sharding = NamedSharding(Mesh(np.asarray(devices), ("data",)), PartitionSpec("data"))
        self.dtype = np.dtype(schema.LATENT_DTYPES[dtype])
        self.latent_params = getattr(self.latent_space, "params", None)
        self.text_params = self.text_encoder.pretrained_params
        self._encode_video = jax.jit(
            lambda params, v: self.latent_space.encode(params, v.astype(jnp.float32) / 127.5 - 1.0))
        self._encode_text = jax.jit(self.text_encoder.encode)
        latent_kind = config.latent.kind
        self.latent_name = f"{latent_kind}:{config.latent.path or config.latent.factor}"
        self.text_name = f"{config.text.kind}:{config.text.path}"

    def _pad(self, array: np.ndarray) -> jax.Array:
        pad = self.batch_size - len(array)
        array = np.concatenate([array, np.repeat(array[-1:], pad, 0)]) if pad else array
        return jax.device_put(array, self.sharding)

    def __call__(self, videos: np.ndarray, captions: list[str]) -> list[dict[str, np.ndarray]]:
        """uint8 videos `[n, frames, res, res, 3]` (n <= batch_size) -> per-clip tensors for a latent record."""
        n = len(videos)
        latents = np.asarray(self._encode_video(self.latent_params, self._pad(videos)))[:n]
        out = [{"video_latents": latents[i].astype(self.dtype)} for i in range(n)]
        if self.pretrained_text:
            ids, mask = self.text_encoder.tokenize(captions)
            text = self._encode_text(self.text_params, self._pad(ids), self._pad(mask))
            sequence, pooled = np.asarray(text.sequence)[:n], np.asarray(text.pooled)[:n]
            for i in range(n):
                out[i].update(text_embeddings=sequence[i].astype(self.dtype), text_mask=mask[i],
                              pooled_text=pooled[i].astype(self.dtype))
        return out


def encode_shard(in_path: str, out_path: str, encoder: DeviceEncoder, *, data_config,
                 progress: tqdm | None = None, on_record: Callable[[int], None] | None = None) -> dict:
    """Encodes one pixel shard into `out_path` (via `.tmp` + rename) and writes its done marker."""
    records = read_records(in_path)
    encoded: dict[int, bytes] = {}
    skipped: list[str] = []
    pending: list[tuple[int, np.ndarray, str, dict]] = []

    def flush():
        tensors = encoder(np.stack([p[1] for p in pending]), [p[2] for p in pending])
        for (index, _, caption, meta), t in zip(pending, tensors):
            meta = dict(meta, latent_space=encoder.latent_name, text_encoder=encoder.text_name,
                        source_shard=os.path.basename(in_path), source_index=index)
            encoded[index] = schema.encode_latent_record(tensors=t, caption=caption, meta=meta)
        if progress is not None:
            progress.update(len(pending))
        pending.clear()

    for index, data in enumerate(records):
        try:
            frames, caption, meta = prepare_clip(data, frames=int(data_config.frames),
                                                 frame_stride=int(data_config.frame_stride),
                                                 resolution=int(data_config.resolution))
        except (video_io.VideoDecodeError, ValueError, KeyError) as e:  # schema.RecordError is a ValueError
            logging.warning("skipping record %d of %s: %s", index, in_path, e)
            skipped.append(f"{index}: {e}")
            if progress is not None:
                progress.update(1)
            continue
        if pending and (frames.shape != pending[0][1].shape or len(pending) == encoder.batch_size):
            flush()
        pending.append((index, frames, caption, meta))
    if pending:
        flush()

    tmp = out_path + ".tmp"
    writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
    for index in sorted(encoded):
        writer.write(encoded[index])
        if on_record is not None:
            on_record(index)
    writer.close()
    os.replace(tmp, out_path)
    summary = dict(input=os.path.basename(in_path), records=len(encoded), skipped=len(skipped),
                   skipped_records=skipped)
    marker = out_path + ".done.json"
    with open(marker + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(marker + ".tmp", marker)
    return summary


def run(config, *, shards: str, out: str, batch_size: int = 8, dtype: str = "float32",
        process_index: int | None = None, process_count: int | None = None,
        on_record: Callable[[int], None] | None = None, encoder: DeviceEncoder | None = None) -> dict:
    """Encodes this host's share of the shards, skipping completed ones; returns counts for this host.

    `encoder` reuses an already built (and compiled) `DeviceEncoder` for `config`; by default one is built.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    paths = input_shards(shards)
    os.makedirs(out, exist_ok=True)
    mine = [(i, p) for i, p in enumerate(paths) if i % process_count == process_index]
    todo = [(i, p) for i, p in mine
            if not os.path.exists(os.path.join(out, output_name(i, len(paths)) + ".done.json"))]
    summary = dict(shards=len(mine), already_done=len(mine) - len(todo), records=0, skipped=0)
    if not todo:
        return summary
    encoder = encoder or DeviceEncoder(config, batch_size=batch_size, dtype=dtype)
    total = sum(array_record_module.ArrayRecordReader(p).num_records() for _, p in todo)
    with tqdm(total=total, desc=f"encoding (host {process_index}/{process_count})", unit="clip") as progress:
        for i, path in todo:
            result = encode_shard(path, os.path.join(out, output_name(i, len(paths))), encoder,
                                  data_config=config.data, progress=progress, on_record=on_record)
            summary["records"] += result["records"]
            summary["skipped"] += result["skipped"]
    return summary


def main(argv):
    del argv
    summary = run(FLAGS.config, shards=FLAGS.shards, out=FLAGS.out, batch_size=FLAGS.batch_size, dtype=FLAGS.dtype)
    print(f"host {jax.process_index()}: {summary['records']} latent records written, {summary['skipped']} clips "
          f"skipped, {summary['already_done']} of {summary['shards']} shards already done -> {FLAGS.out}")


if __name__ == "__main__":
    from ml_collections import config_flags

    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "Experiment config (its data, latent and text sections).",
                                    lock_config=True)
    flags.DEFINE_string("shards", None, "Directory or glob of pixel clip shards.", required=True)
    flags.DEFINE_string("out", None, "Output directory for latent shards.", required=True)
    flags.DEFINE_integer("batch_size", 8, "Clips per device batch on each host (rounded up to the device count).")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Stored dtype of float tensors.")
    flags.mark_flags_as_required(["config"])
    app.run(main)
