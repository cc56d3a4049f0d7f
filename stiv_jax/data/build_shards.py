r"""Cuts videos into clips with captions and writes ArrayRecord shards of clip records (see ``schema.py``).

  python -m stiv_jax.data.build_shards --videos='DIR_OR_GLOB' --captions=FILE.jsonl --out=DIR

Captions file: one JSON object per line, ``{"video": "name.mp4", "caption": "...", "start_sec": s, "end_sec": e}``;
without times a caption covers the whole video. A clip takes the caption whose time range covers its middle.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import numpy as np
from absl import app, flags, logging
from array_record.python import array_record_module
from tqdm import tqdm

from stiv_jax.data import schema, video_io


@dataclass(frozen=True)
class ClipSpec:
    """How the builder cuts clips."""

    clip_frames: int = 16       # source frames per clip
    clip_step: int = 8          # source frames between clip starts
    short_side: int = 80        # stored clips are resized so the short side has this many pixels
    min_frames: int = 16        # videos shorter than this are skipped


def list_videos(videos: str) -> list[str]:
    """Files under a directory, or matching a glob, sorted."""
    if os.path.isdir(videos):
        paths = [os.path.join(videos, n) for n in os.listdir(videos)]
    else:
        paths = glob.glob(videos)
    return sorted(p for p in paths if os.path.isfile(p))


def load_captions(path: str) -> dict[str, list[dict]]:
    """Video basename -> list of caption entries (with optional ``start_sec``/``end_sec``)."""
    captions: dict[str, list[dict]] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                captions.setdefault(os.path.basename(entry["video"]), []).append(entry)
            except (json.JSONDecodeError, KeyError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with 'video' and 'caption': {e}") from e
    return captions


def caption_for(entries: list[dict], time_sec: float) -> str | None:
    """The caption whose time range covers ``time_sec`` (an entry without a range covers everything)."""
    for entry in entries:
        if entry.get("start_sec", -np.inf) <= time_sec < entry.get("end_sec", np.inf):
            return entry["caption"]
    return None


def clips_of_video(path: str, entries: list[dict], spec: ClipSpec):
    """Yields ``(record_bytes)`` for each captioned clip of one video."""
    info = video_io.probe(path)
    if info["num_frames"] < spec.min_frames:
        raise video_io.VideoDecodeError(f"{path} has {info['num_frames']} frames, fewer than {spec.min_frames}")
    scale = spec.short_side / min(info["height"], info["width"])
    size = (int(round(info["height"] * scale / 2)) * 2, int(round(info["width"] * scale / 2)) * 2)
    frames = video_io.decode_frames(path, size=size)
    fps = info["fps"]
    for start in range(0, len(frames) - spec.clip_frames + 1, spec.clip_step):
        clip = frames[start:start + spec.clip_frames]
        caption = caption_for(entries, (start + spec.clip_frames / 2) / fps)
        if caption is None:
            continue
        motion = float(np.abs(np.diff(clip.astype(np.int16), axis=0)).mean()) if len(clip) > 1 else 0.0
        meta = dict(source=os.path.basename(path), start_sec=start / fps, end_sec=(start + len(clip)) / fps,
                    fps=fps, width=size[1], height=size[0], num_frames=len(clip), duration=len(clip) / fps,
                    motion_score=motion)
        yield schema.encode_record(video=video_io.encode_mp4(clip, fps=fps), caption=caption, meta=meta)


def build_shards(*, videos: str, captions: str, out: str, spec: ClipSpec = ClipSpec(),
                 num_shards: int = 4) -> dict:
    """Writes ``out/clips-XXXXX-of-YYYYY.array_record``; returns counts of clips written and inputs skipped."""
    os.makedirs(out, exist_ok=True)
    caption_table = load_captions(captions)
    records, skipped = [], []
    for path in tqdm(list_videos(videos), desc="cutting clips", unit="video"):
        entries = caption_table.get(os.path.basename(path))
        if not entries:
            skipped.append((path, "no caption"))
            continue
        try:
            records.extend(clips_of_video(path, entries, spec))
        except video_io.VideoDecodeError as e:
            logging.warning("skipping %s: %s", path, e)
            skipped.append((path, str(e)))
    num_shards = max(1, min(num_shards, len(records)))
    for shard in range(num_shards):
        name = os.path.join(out, f"clips-{shard:05d}-of-{num_shards:05d}.array_record")
        writer = array_record_module.ArrayRecordWriter(name + ".tmp", "group_size:1")
        for record in records[shard::num_shards]:
            writer.write(record)
        writer.close()
        os.replace(name + ".tmp", name)
    summary = dict(clips=len(records), shards=num_shards, skipped=len(skipped), skipped_inputs=skipped)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv):
    del argv
    summary = build_shards(videos=FLAGS.videos, captions=FLAGS.captions, out=FLAGS.out,
                           spec=ClipSpec(clip_frames=FLAGS.clip_frames, clip_step=FLAGS.clip_step,
                                         short_side=FLAGS.short_side, min_frames=FLAGS.clip_frames),
                           num_shards=FLAGS.num_shards)
    print(f"wrote {summary['clips']} clips in {summary['shards']} shards to {FLAGS.out}; "
          f"skipped {summary['skipped']} inputs")
    for path, why in summary["skipped_inputs"]:
        print(f"  skipped {path}: {why}")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("videos", None, "Directory or glob of input videos.", required=True)
    flags.DEFINE_string("captions", None, "JSONL captions file.", required=True)
    flags.DEFINE_string("out", None, "Output directory for ArrayRecord shards.", required=True)
    flags.DEFINE_integer("clip_frames", 16, "Source frames per clip.")
    flags.DEFINE_integer("clip_step", 8, "Source frames between clip starts.")
    flags.DEFINE_integer("short_side", 80, "Stored clip short side in pixels.")
    flags.DEFINE_integer("num_shards", 4, "Number of output shards.")
    app.run(main)
