r"""A captioned video set whose captions a program can check: real handwritten digits moving over a texture.

  python -m stiv_jax.data.procedural --out=runs/digits/train --num_clips=1200 [--split=train] [--seed=0]
  python -m stiv_jax.data.procedural --out=runs/digits/heldout --num_clips=64 --split=heldout --seed=1

Every clip shows one of scikit-learn's 1,797 real 8x8 handwritten digits (``sklearn.datasets.load_digits``, UCI
optdigits, shipped inside the package), upscaled to ``DIGIT_SIDE`` pixels, in one of ``COLOURS``, moving in one of
``DIRECTIONS`` at one of ``SPEEDS`` over a static grey texture (random gratings plus noise, luma 15..75, so the
bright digit stands out). The caption names all four: ``"a red 3 moves left slowly"``.

Held out: the digit x direction pairs of ``HELDOUT_PAIRS`` (digit d never moves ``DIRECTIONS[d % 4]`` in the
training split: no 0 ever moves left, no 1 right, ...), so the fixed evaluation prompts of
:func:`heldout_prompts` are combinations the model has never seen. ``--split=heldout`` writes clips of those pairs
only: the true clips for TI2V fidelity and the FVD reference.

Output: ``DIR/clips-XXXXX-of-YYYYY.array_record`` of ordinary clip records (``schema.encode_record``, H.264 through
``video_io.encode_mp4``) that the training pipeline reads like any other shards, and ``DIR/summary.json``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np
from absl import app, flags

from stiv_jax.data import schema, video_io

DIRECTIONS = ("left", "right", "up", "down")
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}  # (dx, dy)
SPEEDS = {"slowly": 1.0, "quickly": 2.0}      # pixels per frame in a 32-pixel frame
COLOURS = {"red": (255, 64, 64), "green": (64, 230, 64), "blue": (90, 130, 255), "yellow": (250, 230, 40),
           "magenta": (245, 80, 245), "cyan": (40, 230, 240)}  # all bright (luma > 110) over a 15..75 background
DIGIT_SIDE = 16                               # upscaled digit side in a 32-pixel frame (2x the 8x8 originals)
REFERENCE_SIZE = 32                           # the frame side the geometry above is given for
HELDOUT_PAIRS = frozenset((d, DIRECTIONS[d % 4]) for d in range(10))  # (digit, direction) never trained on
FPS = 8.0                                     # frames per second written in the clips


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What one clip shows; ``caption`` is its text. Positions are in 32-pixel-frame units."""

    digit: int
    image_index: int                 # index into load_digits' images (an image of class ``digit``)
    colour: str
    direction: str
    speed: str
    start_xy: tuple[float, float]    # top-left corner of the digit at frame 0
    texture_seed: int

    @property
    def caption(self) -> str:
        return caption(self.digit, self.colour, self.direction, self.speed)


def caption(digit: int, colour: str, direction: str, speed: str) -> str:
    return f"a {colour} {digit} moves {direction} {speed}"


def parse_caption(text: str) -> dict:
    """``{'colour', 'digit', 'direction', 'speed'}`` of a caption made by :func:`caption`.

    Raises:
      ValueError: naming the caption when it is not ``a <colour> <digit> moves <direction> <speed>``.
    """
    words = text.split()
    if (len(words) != 6 or words[0] != "a" or words[1] not in COLOURS or words[2] not in "0123456789"
            or words[3] != "moves" or words[4] not in DIRECTIONS or words[5] not in SPEEDS):
        raise ValueError(f"caption {text!r} is not 'a <colour> <digit> moves <direction> <speed>' with colour in "
                         f"{list(COLOURS)}, direction in {list(DIRECTIONS)}, speed in {list(SPEEDS)}")
    return dict(colour=words[1], digit=int(words[2]), direction=words[4], speed=words[5])


@functools.lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [1797, 8, 8] in [0, 1], labels int [1797])`` of scikit-learn's handwritten digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the procedural digit set needs scikit-learn: pip install -e '.[data]'") from e
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def upscale_digit(image_8x8: np.ndarray, side: int) -> np.ndarray:
    """float32 ``[side, side]`` alpha in [0, 1]: the 8x8 digit resized bicubically (PIL), clipped."""
    from PIL import Image
    resized = Image.fromarray(image_8x8.astype(np.float32), mode="F").resize((side, side), Image.BICUBIC)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def texture(seed: int, size: int) -> np.ndarray:
    """float32 ``[size, size]`` grey background in [15, 75]: two random gratings plus pixel noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.zeros((size, size), np.float32)
    for _ in range(2):
        fx, fy = rng.uniform(-4, 4, size=2)
        out += np.sin(2 * np.pi * (fx * x + fy * y) + rng.uniform(0, 2 * np.pi))
    out = 0.5 + 0.2 * out + rng.normal(0, 0.08, (size, size))
    return 15.0 + 60.0 * np.clip(out, 0.0, 1.0)


def render(spec: ClipSpec, *, frames: int, size: int = REFERENCE_SIZE) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: the digit of ``spec`` moving over its texture (sub-pixel positions by
    bilinear placement, so slow motion is smooth)."""
    scale = size / REFERENCE_SIZE
    side = int(round(DIGIT_SIDE * scale))
    alpha = upscale_digit(digit_images()[0][spec.image_index], side)
    background = np.repeat(texture(spec.texture_seed, size)[..., None], 3, axis=-1)
    colour = np.asarray(COLOURS[spec.colour], np.float32)
    dx, dy = DIRECTION_VECTORS[spec.direction]
    step = SPEEDS[spec.speed] * scale
    video = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        x0, y0 = spec.start_xy[0] * scale + dx * step * t, spec.start_xy[1] * scale + dy * step * t
        mask = _place(alpha, x0, y0, size)[..., None]
        video[t] = np.clip(np.round(background * (1 - mask) + colour * mask), 0, 255).astype(np.uint8)
    return video


def _place(alpha: np.ndarray, x0: float, y0: float, size: int) -> np.ndarray:
    """``alpha`` pasted with its top-left corner at sub-pixel ``(x0, y0)`` on a ``[size, size]`` canvas."""
    ix, iy = int(np.floor(x0)), int(np.floor(y0))
    fx, fy = x0 - ix, y0 - iy
    h, w = alpha.shape
    padded = np.zeros((h + 1, w + 1), np.float32)
    padded[:h, :w] += (1 - fx) * (1 - fy) * alpha
    padded[:h, 1:] += fx * (1 - fy) * alpha
    padded[1:, :w] += (1 - fx) * fy * alpha
    padded[1:, 1:] += fx * fy * alpha
    canvas = np.zeros((size + 2 * (h + 1), size + 2 * (w + 1)), np.float32)
    top, left = iy + h + 1, ix + w + 1
    canvas[top:top + h + 1, left:left + w + 1] = padded
    return canvas[h + 1:h + 1 + size, w + 1:w + 1 + size]


def random_spec(rng: np.random.Generator, *, frames: int, split: str = "train", digit: int | None = None,
                direction: str | None = None, speed: str | None = None, colour: str | None = None,
                exemplars: int = 0) -> ClipSpec:
    """A random clip of ``split`` ('train': pairs outside ``HELDOUT_PAIRS``; 'heldout': inside; 'any'), with
    the digit entirely inside the frame at every frame. Fixed fields (digit, direction, ...) are kept.
    ``exemplars`` > 0 draws the handwritten image from the first ``exemplars`` images of its class only (0: all
    ~180 of them)."""
    images, labels = digit_images()
    while True:
        d = int(rng.integers(10)) if digit is None else digit
        way = DIRECTIONS[int(rng.integers(4))] if direction is None else direction
        if split == "any" or ((d, way) in HELDOUT_PAIRS) == (split == "heldout") or None not in (digit, direction):
            break
    how = list(SPEEDS)[int(rng.integers(len(SPEEDS)))] if speed is None else speed
    hue = list(COLOURS)[int(rng.integers(len(COLOURS)))] if colour is None else colour
    travel = SPEEDS[how] * (frames - 1)
    room = REFERENCE_SIZE - DIGIT_SIDE
    dx, dy = DIRECTION_VECTORS[way]
    along = lambda v: rng.uniform(travel if v < 0 else 0.0, room - (travel if v > 0 else 0.0))  # noqa: E731
    start = (along(dx), along(dy))
    candidates = np.flatnonzero(labels == d)[:exemplars or None]
    return ClipSpec(digit=d, image_index=int(rng.choice(candidates)), colour=hue, direction=way, speed=how,
                    start_xy=(float(start[0]), float(start[1])), texture_seed=int(rng.integers(2**31)))


def heldout_prompts(count: int = 20) -> list[str]:
    """The fixed evaluation prompts: ``count`` captions cycling over the held-out (digit, direction) pairs, with
    colours and speeds chosen in a fixed order (the same list in every run)."""
    pairs = sorted(HELDOUT_PAIRS)
    colours, speeds = list(COLOURS), list(SPEEDS)
    return [caption(pairs[i % len(pairs)][0], colours[(i * 5 + i // len(pairs)) % len(colours)],
                    pairs[i % len(pairs)][1], speeds[(i // len(pairs)) % len(speeds)]) for i in range(count)]


def clip_record(spec: ClipSpec, video: np.ndarray, *, key: str) -> bytes:
    """One clip record of a rendered ``video`` uint8 ``[frames, size, size, 3]`` (one keyframe: clips are short and
    always read from their first frame)."""
    frames, size = video.shape[0], video.shape[1]
    motion = float(np.abs(np.diff(video.astype(np.int16), axis=0)).mean()) if frames > 1 else 0.0
    meta = dict(source=key, start_sec=0.0, end_sec=frames / FPS, start_frame=0, scene_index=0, fps=FPS,
                width=size, height=size, num_frames=frames, duration=frames / FPS, motion_score=motion, keyint=frames)
    return schema.encode_record(video=video_io.encode_mp4(video, fps=FPS, crf=10, keyint=frames), caption=spec.caption,
                                meta=meta)


def write_set(*, out: str, num_clips: int, split: str = "train", frames: int = 8, size: int = REFERENCE_SIZE,
              seed: int = 0, num_shards: int = 2, exemplars: int = 0) -> dict:
    """Renders ``num_clips`` clips of ``split`` into ``num_shards`` ArrayRecord shards under ``out``
    (``exemplars``: handwritten images per digit, as in :func:`random_spec`).

    Returns (and writes as ``out/summary.json``) the clip count, the caption of every clip, and the settings.
    """
    from stiv_jax.data.build_shards import shard_path, write_shard
    if split not in ("train", "heldout", "any"):
        raise ValueError(f"--split={split!r}: expected train, heldout or any")
    if num_clips < 1 or num_shards < 1 or frames < 2 or exemplars < 0:
        raise ValueError(f"--num_clips={num_clips}, --num_shards={num_shards}, --frames={frames}, "
                         f"--exemplars={exemplars}: need >= 1, 1, 2, 0")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards: list[list[bytes]] = [[] for _ in range(num_shards)]
    captions = []
    for index in range(num_clips):
        spec = random_spec(rng, frames=frames, split=split, exemplars=exemplars)
        shards[index % num_shards].append(clip_record(spec, render(spec, frames=frames, size=size),
                                                      key=f"digits-{split}-{seed}-{index:06d}"))
        captions.append(spec.caption)
    for shard, records in enumerate(shards):
        write_shard(shard_path(out, shard, num_shards), records)
    summary = dict(clips=num_clips, shards=num_shards, split=split, frames=frames, size=size, seed=seed,
                   exemplars=exemplars, captions=captions)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"wrote {num_clips} {split} digit clips ({frames}x{size}x{size}) in {num_shards} shards to {out}")
    return summary


def main(argv):
    del argv
    f = flags.FLAGS
    write_set(out=f.out, num_clips=f.num_clips, split=f.split, frames=f.frames, size=f.size, seed=f.seed,
              num_shards=f.num_shards, exemplars=f.exemplars)


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "Output directory of the ArrayRecord shards.", required=True)
    flags.DEFINE_integer("num_clips", 1200, "Clips to render.")
    flags.DEFINE_enum("split", "train", ["train", "heldout", "any"], "Which (digit, direction) pairs.")
    flags.DEFINE_integer("frames", 8, "Frames per clip.")
    flags.DEFINE_integer("size", REFERENCE_SIZE, "Frame side in pixels (geometry scales with it).")
    flags.DEFINE_integer("seed", 0, "Seed of the clip choices (use another seed for another set).")
    flags.DEFINE_integer("num_shards", 2, "ArrayRecord files.")
    flags.DEFINE_integer("exemplars", 0, "Handwritten images per digit: the first N of each class (0: all).")
    app.run(main)
