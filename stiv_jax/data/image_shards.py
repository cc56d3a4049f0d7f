r"""Writes ArrayRecord shards of image records for text-to-image training and image/video mixing.

  python -m stiv_jax.data.image_shards --images='DIR_OR_GLOB' --captions=FILE.jsonl --out=DIR [--short_side=256]

Captions file: one JSON object per line, ``{"image": "name.png", "caption": "..."}``. Images are stored as PNG
(resized so the short side is ``--short_side`` pixels, 0 keeps the size); unreadable or uncaptioned images are
skipped, counted and logged by name. Output: ``DIR/images-XXXXX-of-YYYYY.array_record`` + ``summary.json``.
"""
from __future__ import annotations

import glob
import io
import json
import os
import time

from absl import app, flags
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from stiv_jax.data import schema
from stiv_jax.data.build_shards import make_summary, report, write_shard
from stiv_jax.data.clips import shard_of

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SHARD_PATTERN = "images-{shard:05d}-of-{num_shards:05d}.array_record"


def image_record(path: str, caption: str, short_side: int) -> bytes:
    """One image file -> an image record (PNG bytes); raises OSError for unreadable files."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if short_side:
            scale = short_side / min(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        meta = dict(source=os.path.basename(path), width=image.width, height=image.height)
    return schema.encode_image_record(image=buffer.getvalue(), caption=caption, meta=meta)


def build_image_shards(*, images: str, captions: str, out: str, short_side: int = 256, num_shards: int = 1,
                       progress: bool = True) -> dict:
    """Writes image-record shards under ``out``; returns the summary (also ``out/summary.json``)."""
    start = time.perf_counter()
    paths = sorted(glob.glob(os.path.join(images, "*")) if os.path.isdir(images) else glob.glob(images))
    paths = [p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise FileNotFoundError(f"--images={images!r} matches no image files")
    with open(captions) as f:
        table = {os.path.basename(e["image"]): e["caption"] for e in map(json.loads, filter(str.strip, f))}
    os.makedirs(out, exist_ok=True)
    shards: list[list[tuple[str, bytes]]] = [[] for _ in range(num_shards)]
    skipped = []
    for path in tqdm(paths, desc="images", disable=not progress):
        name = os.path.basename(path)
        if name not in table:
            skipped.append((path, "no caption: the captions file has no entry for it"))
            continue
        try:
            shards[shard_of(name, num_shards)].append((name, image_record(path, table[name], short_side)))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            skipped.append((path, f"undecodable: {e}"))
    for shard, items in enumerate(shards):
        write_shard(os.path.join(out, SHARD_PATTERN.format(shard=shard, num_shards=num_shards)),
                    [record for _, record in sorted(items)])
    summary = make_summary(clips_per_shard=[len(s) for s in shards], skipped=skipped, videos=len(paths),
                           uncaptioned_clips=0, seconds=time.perf_counter() - start, runner="local-images")
    report(summary, out)
    return summary


def main(argv):
    del argv
    build_image_shards(images=FLAGS.images, captions=FLAGS.captions, out=FLAGS.out, short_side=FLAGS.short_side,
                       num_shards=FLAGS.num_shards)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("images", None, "Directory or glob of images.", required=True)
    flags.DEFINE_string("captions", None, "JSONL captions file ({'image': name, 'caption': text}).", required=True)
    flags.DEFINE_string("out", None, "Output directory.", required=True)
    flags.DEFINE_integer("short_side", 256, "Stored short side in pixels (0: keep).")
    flags.DEFINE_integer("num_shards", 1, "Number of output shards.")
    app.run(main)
