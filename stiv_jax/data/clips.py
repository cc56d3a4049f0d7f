"""One video -> its captioned clip records: PySceneDetect scene cuts, a maximum clip length, quality checks.

This is the per-input work shared by the local builder (``build_shards``) and the Apache Beam pipeline
(``beam_pipeline``), so both write the same records. Pure function of (file, captions, ``ClipSpec``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from stiv_jax.data import schema, video_io

DETECTION_WIDTH = 256  # frames are scaled to this width for scene detection


@dataclass(frozen=True)
class ClipSpec:
    """How videos are cut into clips.

    A video is split at the scene cuts PySceneDetect's ``ContentDetector`` finds; each scene is cut into
    consecutive clips of ``max_clip_frames`` (or ``max_clip_seconds``, whichever is shorter); a remainder is kept
    when it has at least ``min_clip_frames`` frames. A video giving no clip is skipped as too short.
    """

    max_clip_frames: int = 16          # frames per clip at most
    min_clip_frames: int = 16          # shorter clips (scene ends) are dropped
    max_clip_seconds: float = 0.0      # >0: also cap clips at this many seconds
    short_side: int = 80               # stored clips are resized so the short side has this many pixels (0: keep)
    scene_threshold: float = 27.0      # ContentDetector threshold (PySceneDetect default)
    min_scene_frames: int = 15         # ContentDetector min_scene_len
    crf: int = 18                      # x264 quality of the stored clip
    # Frames between keyframes of a stored clip (recorded as meta keyint): a temporal crop seeks to the keyframe
    # at or before its start and decodes at most keyint - 1 frames it drops. Measured (288p, 20 frames at stride 2
    # from a random start, one core): a 128-frame clip 67 ms/clip with one keyframe, 50 ms with keyint 16 (1.28x
    # the bytes); a 48-frame clip, whose starts span 10 frames, 51 -> 56 ms (keyframes cost more to decode than
    # the frames they save). 0: one keyframe per clip.
    keyint: int = 16

    def replace(self, **changes) -> "ClipSpec":
        return dataclasses.replace(self, **changes)


@dataclass
class VideoResult:
    """What one input gave: records ``[(key, bytes)]`` sorted by key, or the reason it was skipped."""

    path: str
    records: list[tuple[str, bytes]]
    skipped: str | None = None          # reason, when the input gave no clip
    uncaptioned_clips: int = 0          # clips dropped because no caption covers them


def clip_key(source: str, start_frame: int) -> str:
    """Stable identity of a clip: orders records and assigns them to shards."""
    return f"{source}:{start_frame:09d}"


def shard_of(key: str, num_shards: int) -> int:
    """The shard a clip key belongs to (a stable hash, identical in every process and runner)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % num_shards


def caption_for(entries: list[dict], time_sec: float) -> str | None:
    """The caption whose time range covers ``time_sec`` (an entry without a range covers everything)."""
    for entry in entries:
        if entry.get("start_sec", -np.inf) <= time_sec < entry.get("end_sec", np.inf):
            return entry["caption"]
    return None


def stored_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` with the short side scaled to ``short_side`` (even sizes for yuv420p)."""
    if not short_side:
        return height - height % 2, width - width % 2
    scale = short_side / min(height, width)
    return int(round(height * scale / 2)) * 2, int(round(width * scale / 2)) * 2


def detect_scenes(path: str, *, spec: ClipSpec, height: int, width: int, declared_frames: int
                  ) -> tuple[list[tuple[int, int]], int]:
    """Scene ranges ``[(start_frame, end_frame)]`` covering the video, and the number of frames decoded.

    Raises ``VideoDecodeError`` for corrupt data and for truncated files (fewer frames than the header declares).
    """
    from scenedetect.detectors import ContentDetector  # imports OpenCV; only the builder needs it

    detector = ContentDetector(threshold=spec.scene_threshold, min_scene_len=spec.min_scene_frames)
    det_w = min(DETECTION_WIDTH, width - width % 2)
    det_h = max(2, int(round(height * det_w / width / 2)) * 2)
    cuts: list[int] = []
    count = 0
    for count, frame in enumerate(video_io.iter_frames(path, size=(det_h, det_w), pixel_format="bgr24"), 1):
        cuts.extend(detector.process_frame(count - 1, frame))
    cuts.extend(detector.post_process(count - 1) or [])
    if declared_frames and count < 0.9 * declared_frames:
        raise video_io.VideoDecodeError(f"truncated: decoded {count} of the {declared_frames} frames its header "
                                        f"declares")
    bounds = [0] + sorted(c for c in set(cuts) if 0 < c < count) + [count]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a], count


def cut_scene(start: int, end: int, *, max_frames: int, min_frames: int) -> list[tuple[int, int]]:
    """Consecutive clips ``[(start_frame, end_frame)]`` of at most ``max_frames`` in one scene."""
    clips = []
    for a in range(start, end, max_frames):
        b = min(a + max_frames, end)
        if b - a >= min_frames:
            clips.append((a, b))
    return clips


def process_video(path: str, entries: list[dict] | None, spec: ClipSpec) -> VideoResult:
    """Cuts one video into captioned clip records; never raises for bad input (the result says why)."""
    source = os.path.basename(path)
    if not entries:
        return VideoResult(path, [], skipped="no caption: the captions file has no entry for it")
    try:
        info = video_io.probe(path)
        if info["width"] <= 0 or info["height"] <= 0:
            raise video_io.VideoDecodeError("no video size")
        fps = info["fps"]
        max_frames = spec.max_clip_frames
        if spec.max_clip_seconds > 0:
            max_frames = min(max_frames, max(1, int(spec.max_clip_seconds * fps)))
        scenes, total = detect_scenes(path, spec=spec, height=info["height"], width=info["width"],
                                      declared_frames=info["num_frames"])
        plan = [(scene_index, a, b) for scene_index, (s, e) in enumerate(scenes)
                for a, b in cut_scene(s, e, max_frames=max_frames, min_frames=spec.min_clip_frames)]
        if not plan:
            return VideoResult(path, [], skipped=f"too short: {total} frames in {len(scenes)} scene(s), no clip of "
                                                 f"{spec.min_clip_frames} frames")
        size = stored_size(info["height"], info["width"], spec.short_side)
        records, uncaptioned = [], 0
        plan_iter = iter(plan)
        scene_index, a, b = next(plan_iter)
        buffer = []
        for index, frame in enumerate(video_io.iter_frames(path, size=size)):
            if index < a:
                continue
            buffer.append(frame)
            if index + 1 < b:
                continue
            caption = caption_for(entries, (a + b) / 2 / fps)
            if caption is None:
                uncaptioned += 1
            else:
                clip = np.stack(buffer)
                records.append((clip_key(source, a), _clip_record(
                    clip, caption, source=source, start=a, fps=fps, scene_index=scene_index, spec=spec,
                    source_size=(int(info["height"]), int(info["width"])))))
            buffer = []
            nxt = next(plan_iter, None)
            if nxt is None:
                break
            scene_index, a, b = nxt
    except video_io.VideoDecodeError as e:
        return VideoResult(path, [], skipped=f"undecodable: {e}")
    if not records:
        return VideoResult(path, [], skipped=f"no captioned clip: captions cover none of its {uncaptioned} clips",
                           uncaptioned_clips=uncaptioned)
    return VideoResult(path, records, uncaptioned_clips=uncaptioned)


def motion_score(clip: np.ndarray) -> float:
    """Mean absolute difference of consecutive frames' luma, in [0, 255] (0 for a still clip)."""
    if len(clip) < 2:
        return 0.0
    luma = clip.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(np.abs(np.diff(luma, axis=0)).mean())


def _clip_record(clip: np.ndarray, caption: str, *, source: str, start: int, fps: float, scene_index: int,
                 spec: ClipSpec, source_size: tuple[int, int]) -> bytes:
    keyint = min(spec.keyint, len(clip)) if spec.keyint > 0 else len(clip)
    meta = dict(source=source, start_sec=start / fps, end_sec=(start + len(clip)) / fps, start_frame=start,
                scene_index=scene_index, fps=fps, width=int(clip.shape[2]), height=int(clip.shape[1]),
                num_frames=len(clip), duration=len(clip) / fps, motion_score=motion_score(clip), keyint=keyint,
                source_height=source_size[0], source_width=source_size[1])
    video = video_io.encode_mp4(clip, fps=fps, crf=spec.crf, keyint=keyint if spec.keyint > 0 else None)
    return schema.encode_record(video=video, caption=caption, meta=meta)
