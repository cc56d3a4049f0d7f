"""Clip sets for evaluation: uint8 clips read from a directory (or glob) of videos or from ArrayRecord shards.

A video file, or the video of a shard record, gives up to ``clips_per_video`` consecutive, non-overlapping
windows of ``num_frames`` frames taken ``frame_stride`` apart, starting at its first frame. A generated sample is
usually exactly one window. Videos that cannot be decoded or are too short are skipped and counted, never fatal.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from absl import logging

from stiv_jax.data import schema, video_io

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


@dataclass
class ClipSetReport:
    """What reading a clip set produced: clips yielded and inputs skipped (``(name, reason)``)."""

    clips: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ClipWindows:
    """How clips are cut from one video."""

    num_frames: int = 16        # frames per clip (FVD is defined on 16-frame clips)
    frame_stride: int = 1       # source frames between kept frames
    clips_per_video: int = 1    # consecutive non-overlapping windows per video, from its first frame

    def cut(self, frames_thwc: np.ndarray) -> list[np.ndarray]:
        """Windows ``[num_frames, height, width, 3]`` of decoded ``frames_thwc`` (fewer if it is short)."""
        span = (self.num_frames - 1) * self.frame_stride + 1
        step = self.num_frames * self.frame_stride
        starts = range(0, len(frames_thwc) - span + 1, step)
        return [frames_thwc[s:s + span:self.frame_stride] for s in list(starts)[:self.clips_per_video]]


def list_clip_sources(source: str) -> tuple[str, list[str]]:
    """``('shards' | 'videos', paths)`` of a directory or glob, sorted.

    Raises:
      FileNotFoundError: naming ``source`` when it holds neither ArrayRecord shards nor video files.
    """
    if os.path.isdir(source):
        paths = sorted(os.path.join(source, n) for n in os.listdir(source))
    else:
        paths = sorted(glob.glob(source))
    shards = [p for p in paths if p.endswith(".array_record")]
    if shards:
        return "shards", shards
    videos = [p for p in paths if os.path.isfile(p) and p.lower().endswith(VIDEO_EXTENSIONS)]
    if videos:
        return "videos", videos
    raise FileNotFoundError(f"{source!r} holds no .array_record shards and no video files {VIDEO_EXTENSIONS}")


def iter_clips(source: str, windows: ClipWindows = ClipWindows(), *, max_clips: int | None = None,
               report: ClipSetReport | None = None) -> Iterator[np.ndarray]:
    """Yields uint8 clips ``[num_frames, height, width, 3]`` of ``source`` (directory or glob of videos or shards).

    Skipped inputs and the clip count are recorded in ``report`` when given.
    """
    return (clip for clip, _ in iter_captioned_clips(source, windows, max_clips=max_clips, report=report))


def iter_captioned_clips(source: str, windows: ClipWindows = ClipWindows(), *, max_clips: int | None = None,
                         report: ClipSetReport | None = None) -> Iterator[tuple[np.ndarray, str]]:
    """Like :func:`iter_clips`, yielding ``(clip, caption)``: a shard record's caption, or a video file's name
    without extension (VBench-style ``{prompt}-{index}.mp4`` names give back the prompt and its index)."""
    report = report if report is not None else ClipSetReport()
    kind, paths = list_clip_sources(source)
    for name, video, caption in _encoded_videos(kind, paths, report):
        if max_clips is not None and report.clips >= max_clips:
            return
        try:
            needed = ((windows.num_frames * windows.clips_per_video) - 1) * windows.frame_stride + 1
            frames = _decode_prefix(video, needed)
        except video_io.VideoDecodeError as e:
            logging.warning("skipping %s: %s", name, e)
            report.skipped.append((name, str(e)))
            continue
        clips = windows.cut(frames)
        if not clips:
            report.skipped.append((name, f"{len(frames)} frames, fewer than one clip of {windows.num_frames} "
                                         f"frames at stride {windows.frame_stride}"))
            continue
        for clip in clips:
            if max_clips is not None and report.clips >= max_clips:
                return
            report.clips += 1
            yield clip, caption


def _decode_prefix(video, max_frames: int) -> np.ndarray:
    """Up to ``max_frames`` leading frames (a short video gives what it has; ``cut`` decides if that is enough)."""
    try:
        return video_io.decode_frames(video, num_frames=max_frames)
    except video_io.VideoDecodeError:
        return video_io.decode_frames(video)  # fewer frames than asked: decode all, or raise if corrupt


def _encoded_videos(kind: str, paths: list[str], report: ClipSetReport):
    """``(name, path_or_bytes, caption)`` of every video of the listed files or shard records."""
    if kind == "videos":
        yield from ((p, p, os.path.splitext(os.path.basename(p))[0]) for p in paths)
        return
    from array_record.python import array_record_data_source
    for path in paths:
        try:
            source = array_record_data_source.ArrayRecordDataSource([path])
        except Exception as e:  # noqa: BLE001 - a damaged shard is skipped, the others still count
            report.skipped.append((path, f"cannot open shard: {e}"))
            continue
        for index in range(len(source)):
            name = f"{os.path.basename(path)}[{index}]"
            try:
                record = schema.decode_record(source[index])
            except Exception as e:  # noqa: BLE001 - msgpack raises several types for damaged bytes
                report.skipped.append((name, f"bad record: {e}"))
                continue
            yield name, record["video"], record["caption"]
