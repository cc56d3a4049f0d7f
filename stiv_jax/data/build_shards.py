r"""Cuts videos into captioned clips and writes ArrayRecord shards of clip records (schema: ``schema.py``).

  python -m stiv_jax.data.build_shards --videos='DIR_OR_GLOB' --captions=FILE.jsonl --out=DIR \
      [--num_workers=N] [--num_shards=4] [--max_clip_frames=16] [--min_clip_frames=16] [--short_side=80] [--keyint=16]

Each video is split at PySceneDetect scene cuts, then into clips of at most ``--max_clip_frames`` frames
(``--max_clip_seconds``); see ``clips.ClipSpec``. Videos are processed in ``--num_workers`` processes. The same
pipeline runs on Apache Beam: ``python -m stiv_jax.data.beam_pipeline`` (identical records and shards).

Captions file: one JSON object per line, ``{"video": "name.mp4", "caption": "...", "start_sec": s, "end_sec": e}``;
without times a caption covers the whole video. A clip takes the caption whose time range covers its middle.

Output: ``DIR/clips-XXXXX-of-YYYYY.array_record`` (a clip goes to shard ``clips.shard_of(key)``, records in key
order within a shard) and ``DIR/summary.json`` (clips written, inputs skipped by name and reason). Corrupt,
truncated, undecodable, uncaptioned or too-short inputs are skipped, counted and logged, never fatal.
"""
from __future__ import annotations

import collections
import glob
import json
import multiprocessing
import os
import time

from absl import flags, logging
from array_record.python import array_record_module
from tqdm import tqdm

from stiv_jax.data import clips as clips_lib
from stiv_jax.data.clips import ClipSpec, VideoResult  # noqa: F401  (public names of the builder)

SHARD_PATTERN = "clips-{shard:05d}-of-{num_shards:05d}.array_record"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts", ".flv")


class NoClipsError(RuntimeError):
    """Every input video was skipped: there is nothing to write (the CLI exits with status 1)."""


def list_videos(videos: str) -> list[str]:
    """Files under a directory (video extensions only) or matching a glob, sorted by name then path."""
    if os.path.isdir(videos):
        paths = [os.path.join(videos, n) for n in os.listdir(videos) if n.lower().endswith(VIDEO_EXTENSIONS)]
    else:
        paths = glob.glob(videos)
    return sorted((p for p in paths if os.path.isfile(p)), key=lambda p: (os.path.basename(p), p))


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
                entry["caption"]  # noqa: B018  (required)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: expected a JSON object with 'video' and 'caption': {e}") from e
    return captions


def shard_path(out: str, shard: int, num_shards: int) -> str:
    return os.path.join(out, SHARD_PATTERN.format(shard=shard, num_shards=num_shards))


def write_shard(path: str, records: list[bytes]) -> None:
    """Writes one ArrayRecord file atomically (``group_size:1``: every record randomly accessible)."""
    writer = array_record_module.ArrayRecordWriter(path + ".tmp", "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()
    os.replace(path + ".tmp", path)


def make_summary(*, clips_per_shard: list[int], skipped: list[tuple[str, str]], videos: int,
                 uncaptioned_clips: int, seconds: float, runner: str) -> dict:
    """The ``summary.json`` content; skip reasons are counted by their category (text before ':')."""
    reasons = collections.Counter(why.split(":")[0] for _, why in skipped)
    return dict(clips=sum(clips_per_shard), shards=len(clips_per_shard), clips_per_shard=clips_per_shard,
                videos=videos, skipped=len(skipped), skipped_by_reason=dict(sorted(reasons.items())),
                skipped_inputs=[list(s) for s in sorted(skipped)], uncaptioned_clips=uncaptioned_clips,
                seconds=round(seconds, 2), runner=runner)


def report(summary: dict, out: str) -> None:
    """Writes ``out/summary.json``, logs every skipped input by name and prints a one-line summary."""
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for path, why in summary["skipped_inputs"]:
        logging.warning("skipped %s: %s", path, why)
    print(f"wrote {summary['clips']} clips in {summary['shards']} shards to {out} from {summary['videos']} videos "
          f"in {summary['seconds']:.1f}s; skipped {summary['skipped']} inputs {summary['skipped_by_reason']}")
    for path, why in summary["skipped_inputs"]:
        print(f"  skipped {path}: {why}")


def _process(args) -> VideoResult:
    path, entries, spec = args
    return clips_lib.process_video(path, entries, spec)


def build_shards(*, videos: str, captions: str, out: str, spec: ClipSpec = ClipSpec(), num_shards: int = 4,
                 num_workers: int | None = None, progress: bool = True) -> dict:
    """Cuts every video of ``videos`` into clip records and writes ``num_shards`` shards under ``out``.

    Args:
      videos: directory or glob of input videos.
      captions: JSONL captions file (see the module docstring).
      out: output directory (created).
      spec: how to cut clips.
      num_shards: number of ArrayRecord files.
      num_workers: processes cutting videos in parallel (None: one per CPU; <= 1: in this process).
      progress: show a tqdm progress bar.

    Returns:
      The summary dict also written to ``out/summary.json``.
    """
    start_time = time.perf_counter()
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1")
    caption_table = load_captions(captions)   # before creating --out: bad input leaves nothing behind
    paths = list_videos(videos)
    if not paths:
        raise FileNotFoundError(f"--videos={videos!r} matches no video files")
    num_workers = min(os.cpu_count() or 1, len(paths)) if num_workers is None else min(num_workers, len(paths))
    jobs = [(p, caption_table.get(os.path.basename(p)), spec) for p in paths]
    shards: list[list[tuple[str, bytes]]] = [[] for _ in range(num_shards)]
    skipped, uncaptioned = [], 0
    bar = tqdm(total=len(jobs), desc="cutting clips", unit="video", disable=not progress)

    def collect(result: VideoResult):
        nonlocal uncaptioned
        uncaptioned += result.uncaptioned_clips
        if result.skipped:
            skipped.append((result.path, result.skipped))
        for key, record in result.records:
            shards[clips_lib.shard_of(key, num_shards)].append((key, record))
        bar.update(1)
        bar.set_postfix(clips=sum(map(len, shards)), skipped=len(skipped))

    if num_workers <= 1:
        for job in jobs:
            collect(_process(job))
    else:
        # spawn: safe when the caller has imported jax (threads) and works the same on every platform.
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            for result in pool.imap_unordered(_process, jobs):
                collect(result)
    bar.close()
    if not any(shards):
        raise NoClipsError(f"no clip was cut from the {len(paths)} videos of --videos={videos!r}, nothing written to "
                           f"{out}; skipped {len(skipped)}: "
                           + "; ".join(f"{p}: {why}" for p, why in sorted(skipped)[:5]))
    os.makedirs(out, exist_ok=True)
    for shard, items in enumerate(shards):
        write_shard(shard_path(out, shard, num_shards), [record for _, record in sorted(items)])
    summary = make_summary(clips_per_shard=[len(s) for s in shards], skipped=skipped, videos=len(paths),
                           uncaptioned_clips=uncaptioned, seconds=time.perf_counter() - start_time, runner="local")
    report(summary, out)
    return summary


def spec_from_flags(flag_values) -> ClipSpec:
    return ClipSpec(max_clip_frames=flag_values.max_clip_frames, min_clip_frames=flag_values.min_clip_frames,
                    max_clip_seconds=flag_values.max_clip_seconds, short_side=flag_values.short_side,
                    scene_threshold=flag_values.scene_threshold, keyint=flag_values.keyint)


def define_flags() -> None:
    """Flags shared by this CLI and the Beam pipeline."""
    flags.DEFINE_string("videos", None, "Directory or glob of input videos.", required=True)
    flags.DEFINE_string("captions", None, "JSONL captions file.", required=True)
    flags.DEFINE_string("out", None, "Output directory for ArrayRecord shards.", required=True)
    flags.DEFINE_integer("num_shards", 4, "Number of output shards.")
    flags.DEFINE_integer("max_clip_frames", ClipSpec.max_clip_frames, "Frames per clip at most.")
    flags.DEFINE_integer("min_clip_frames", ClipSpec.min_clip_frames, "Shorter clips are dropped.")
    flags.DEFINE_float("max_clip_seconds", ClipSpec.max_clip_seconds, ">0: also cap clips at this duration.")
    flags.DEFINE_integer("short_side", ClipSpec.short_side, "Stored clip short side in pixels (0: keep).")
    flags.DEFINE_float("scene_threshold", ClipSpec.scene_threshold, "PySceneDetect ContentDetector threshold.")
    flags.DEFINE_integer("keyint", ClipSpec.keyint, "Frames between keyframes of a stored clip, so a temporal crop "
                         "seeks (0: one keyframe per clip).")


def main(argv):
    del argv
    build_shards(videos=FLAGS.videos, captions=FLAGS.captions, out=FLAGS.out, spec=spec_from_flags(FLAGS),
                 num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    define_flags()
    flags.DEFINE_integer("num_workers", None, "Processes cutting videos (default: one per CPU core).")
    from stiv_jax.launch import cli
    cli.run(main)
