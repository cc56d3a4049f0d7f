"""The clip record stored in ArrayRecord shards (schema version 1).

A record is a msgpack map:
  version  int    schema version (1)
  video    bytes  the clip as an H.264 mp4 (only the clip's frames, re-encoded)
  caption  str    the text prompt
  meta     map    source (str), start_sec, end_sec, fps, width, height, num_frames, duration (float/int),
                  motion_score (float, mean absolute frame difference in [0, 255])
"""
from __future__ import annotations

import msgpack

SCHEMA_VERSION = 1
META_FIELDS = ("source", "start_sec", "end_sec", "fps", "width", "height", "num_frames", "duration", "motion_score")


def encode_record(*, video: bytes, caption: str, meta: dict) -> bytes:
    """Serialises one clip record; ``meta`` must hold every field of ``META_FIELDS``."""
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"clip metadata lacks fields {missing}")
    return msgpack.packb({"version": SCHEMA_VERSION, "video": video, "caption": caption, "meta": meta},
                         use_bin_type=True)


def decode_record(data: bytes) -> dict:
    """Parses a record, refusing other schema versions by name."""
    record = msgpack.unpackb(data, raw=False)
    if record.get("version") != SCHEMA_VERSION:
        raise ValueError(f"clip record has schema version {record.get('version')}, this code reads {SCHEMA_VERSION}")
    return record
