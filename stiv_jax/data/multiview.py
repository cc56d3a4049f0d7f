r"""Multi-view records: an input view plus the paper's six target views, as clip shards the pipeline reads.

  # orbit renders on disk (e.g. Objaverse renders) -> shards
  python -m stiv_jax.data.multiview --renders=DIR --out=runs/mv_data [--size=320] [--num_shards=4]
  # procedural objects (numpy rasteriser, stiv_jax.data.orbit_render) -> renders on disk -> shards
  python -m stiv_jax.data.multiview --procedural=200 --renders=runs/mv_renders --out=runs/mv_data --size=32

**Layout (STIV §7, after Zero123++).** Frame 0 is the input view; frames 1-6 are the target views at azimuths
``+30, +90, +150, +210, +270, +330`` degrees relative to the input and absolute elevations ``30, -20, 30, -20,
30, -20`` (``TARGET_VIEWS``). The multi-view stage trains 8-frame clips (temporal patch 2), so frame 7 repeats
frame 6 (``PAD_FRAMES``). One record is an ordinary clip record (``schema.encode_record``: H.264, 8 frames, one
keyframe) whose meta also holds ``views`` (``[[relative azimuth, elevation], ...]`` of frames 0-6),
``input_azimuth``, ``input_elevation``, ``num_views`` = 7 and ``temporal_crop`` = False (the reader always starts
at frame 0, the input view); the stage trains it with the empty text and the multi-view task (frame 0 given).

**Orbit renders on disk.** ``DIR/<object>/views.json`` per object::

  {"caption": "a red chair", "input": 0,
   "views": [{"file": "000.png", "azimuth": 0.0, "elevation": 10.0}, ...]}

``input`` (default 0) picks the input view; for each target the render nearest in angle is taken, within
``--max_angle_error`` degrees. An object without such a render, with an unreadable image or a malformed
``views.json`` is skipped, counted and named in ``summary.json`` (``build_shards``'s format); nothing stops
the build. Images are resized (short side) and center-cropped to ``--size``.
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags
from PIL import Image

from stiv_jax.data import decoders, orbit_render, schema, video_io
from stiv_jax.data.build_shards import make_summary, report, shard_path, write_shard

TARGET_VIEWS = ((30.0, 30.0), (90.0, -20.0), (150.0, 30.0), (210.0, -20.0), (270.0, 30.0), (330.0, -20.0))
PAD_FRAMES = 1                     # frame 7 repeats frame 6: 8 frames for temporal patch 2
FPS = 8.0                          # nominal fps written in the clip (views are not time)


class ViewError(ValueError):
    """An object whose renders cannot make a record (named and counted, never raised out of a build)."""


def angle_error(azimuth_a: float, elevation_a: float, azimuth_b: float, elevation_b: float) -> float:
    """Great-circle angle in degrees between two camera directions on the orbit sphere."""
    a = orbit_render.camera(azimuth_a, elevation_a)[0]
    b = orbit_render.camera(azimuth_b, elevation_b)[0]
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def select_views(views: list[dict], *, input_index: int, max_angle_error: float) -> list[int]:
    """Indices into ``views`` (``{file, azimuth, elevation}``) of the input view and the six ``TARGET_VIEWS``
    (nearest render for each)."""
    if not 0 <= input_index < len(views):
        raise ViewError(f"input view {input_index} of {len(views)} views")
    base = views[input_index]["azimuth"]
    chosen = [input_index]
    for relative, elevation in TARGET_VIEWS:
        errors = [angle_error(base + relative, elevation, v["azimuth"], v["elevation"]) for v in views]
        best = int(np.argmin(errors))
        if errors[best] > max_angle_error:
            raise ViewError(f"no render within {max_angle_error:g} degrees of azimuth {relative:+g} (relative), "
                            f"elevation {elevation:g}; nearest is {errors[best]:.1f} degrees away")
        chosen.append(best)
    return chosen


def load_view(path: str, size: int) -> np.ndarray:
    """uint8 ``[size, size, 3]``: the image (alpha composited on the renders' light grey), short side resized,
    center-cropped."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "P"):
                rgba = image.convert("RGBA")
                image = Image.new("RGBA", rgba.size, orbit_render.BACKGROUND + (255,))
                image.alpha_composite(rgba)
            image = image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as e:
        raise ViewError(f"unreadable image {os.path.basename(path)}: {e}") from e
    (h, w), (top, left), _ = decoders.resize_crop_plan(image.height, image.width, size, size, None)
    pixels = np.asarray(image.resize((w, h), Image.BICUBIC))
    return np.ascontiguousarray(pixels[top:top + size, left:left + size])


def make_record(frames: np.ndarray, *, key: str, caption: str, views: list[tuple[float, float]],
                input_view: tuple[float, float]) -> bytes:
    """One multi-view clip record of uint8 ``frames`` ``[7, size, size, 3]`` (input + six targets)."""
    video = np.concatenate([frames, np.repeat(frames[-1:], PAD_FRAMES, axis=0)])
    n = len(video)
    meta = dict(source=key, start_sec=0.0, end_sec=n / FPS, start_frame=0, scene_index=0, fps=FPS,
                width=int(video.shape[2]), height=int(video.shape[1]), num_frames=n, duration=n / FPS,
                motion_score=0.0, keyint=n, views=[[float(a), float(e)] for a, e in views],
                input_azimuth=float(input_view[0]), input_elevation=float(input_view[1]), num_views=len(frames),
                temporal_crop=False)
    return schema.encode_record(video=video_io.encode_mp4(video, fps=FPS, crf=12, keyint=n), caption=caption,
                                meta=meta)


def object_record(directory: str, *, size: int, max_angle_error: float) -> bytes:
    """The record of one object directory (``views.json`` + images); raises ``ViewError`` naming the problem."""
    try:
        with open(os.path.join(directory, "views.json")) as f:
            spec = json.load(f)
        views = [dict(file=str(v["file"]), azimuth=float(v["azimuth"]), elevation=float(v["elevation"]))
                 for v in spec["views"]]
        input_index = int(spec.get("input", 0))
    except FileNotFoundError as e:
        raise ViewError("no views.json") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ViewError(f"malformed views.json: {e!r}") from e
    chosen = select_views(views, input_index=input_index, max_angle_error=max_angle_error)
    frames = np.stack([load_view(os.path.join(directory, views[i]["file"]), size) for i in chosen])
    base = views[input_index]["azimuth"]
    relative = [((views[i]["azimuth"] - base) % 360.0, views[i]["elevation"]) for i in chosen]
    return make_record(frames, key=os.path.basename(directory.rstrip("/")), caption=str(spec.get("caption", "")),
                       views=relative, input_view=(base, views[input_index]["elevation"]))


def build(*, renders: str, out: str, size: int = 320, num_shards: int = 4, max_angle_error: float = 5.0) -> dict:
    """Shards of every object directory under ``renders``; returns (and writes) the ``summary.json``."""
    start = time.time()
    if not os.path.isdir(renders):
        raise FileNotFoundError(f"--renders={renders!r} is not a directory of object directories")
    objects = sorted(d for d in os.listdir(renders) if os.path.isdir(os.path.join(renders, d)))
    if not objects:
        raise FileNotFoundError(f"--renders={renders!r} holds no object directory (each with a views.json)")
    os.makedirs(out, exist_ok=True)
    records, skipped = [], []
    for name in objects:
        try:
            records.append(object_record(os.path.join(renders, name), size=size, max_angle_error=max_angle_error))
        except ViewError as e:
            skipped.append((name, str(e)))
    shards = [records[i::num_shards] for i in range(num_shards)]
    for index, records in enumerate(shards):
        write_shard(shard_path(out, index, num_shards), records)
    summary = make_summary(clips_per_shard=[len(s) for s in shards], skipped=skipped, videos=len(objects),
                           uncaptioned_clips=0, seconds=time.time() - start, runner="multiview")
    report(summary, out)
    return summary


def write_procedural_renders(*, out: str, num_objects: int, size: int, seed: int = 0, extra_views: int = 4) -> None:
    """Renders ``num_objects`` procedural objects in the on-disk layout above: the input view at a random
    azimuth and elevation in [-10, 20], the six target views, and ``extra_views`` random other views (so the
    builder's nearest-view choice has something to choose from)."""
    rng = np.random.default_rng(seed)
    for index in range(num_objects):
        obj = orbit_render.random_object(rng)
        base, elevation = float(rng.uniform(0, 360)), float(rng.uniform(-10, 20))
        cameras = [(base, elevation)] + [((base + a) % 360, e) for a, e in TARGET_VIEWS]
        cameras += [(float(rng.uniform(0, 360)), float(rng.uniform(-40, 50))) for _ in range(extra_views)]
        order = [0] + list(rng.permutation(np.arange(1, len(cameras))))   # targets not in layout order
        directory = os.path.join(out, f"object_{index:05d}")
        os.makedirs(directory, exist_ok=True)
        views = []
        for slot, camera_index in enumerate(order):
            azimuth, elev = cameras[camera_index]
            name = f"{slot:03d}.png"
            Image.fromarray(orbit_render.render(obj, azimuth=azimuth, elevation=elev, size=size)).save(
                os.path.join(directory, name))
            views.append(dict(file=name, azimuth=round(azimuth, 3), elevation=round(elev, 3)))
        with open(os.path.join(directory, "views.json"), "w") as f:
            json.dump(dict(caption=orbit_render.describe(obj), input=0, views=views), f, indent=1)


def define_flags() -> None:
    flags.DEFINE_string("renders", None, "Directory of object directories (views.json + images).", required=True)
    flags.DEFINE_string("out", None, "Output directory for the ArrayRecord shards.", required=True)
    flags.DEFINE_integer("procedural", 0, "First render this many procedural objects into --renders.")
    flags.DEFINE_integer("size", 320, "Stored view side in pixels (the multi-view stage trains at 320).")
    flags.DEFINE_integer("num_shards", 4, "Output shards.")
    flags.DEFINE_float("max_angle_error", 5.0, "Largest angle (degrees) between a target view and its render.")
    flags.DEFINE_integer("seed", 0, "Seed of the procedural objects.")


def main(argv):
    del argv
    f = flags.FLAGS
    if f.procedural:
        write_procedural_renders(out=f.renders, num_objects=f.procedural, size=f.size, seed=f.seed)
    build(renders=f.renders, out=f.out, size=f.size, num_shards=f.num_shards, max_angle_error=f.max_angle_error)


if __name__ == "__main__":
    define_flags()
    app.run(main)
