"""The records stored in ArrayRecord shards: clips, images and precomputed latents (the single definition).

Every record is a msgpack map with ``version`` (int) and ``kind`` (str). Readers refuse versions they do not
know, by name. Three kinds:

**clip** (``CLIP_VERSION`` = 3; versions 1, the skeleton's, and 2 are still read) - a video clip for pixel
training:
  version  int    3
  kind     str    "clip"
  video    bytes  the clip alone as an H.264 mp4 (re-encoded; frame 0 is the clip's first frame; version 3: a
                  keyframe every ``keyint`` frames)
  caption  str    the text prompt
  meta     map    CLIP_META_FIELDS:
             source        str    input file name (basename)
             start_sec     float  clip start in the source video
             end_sec       float  clip end (exclusive) in the source video
             start_frame   int    first source frame index (version 2)
             scene_index   int    which detected scene of the source the clip lies in (version 2)
             fps           float  frames per second of the clip
             width, height int    stored clip size in pixels
             num_frames    int    frames stored
             duration      float  num_frames / fps seconds
             motion_score  float  mean absolute difference of consecutive frames, in [0, 255]
             keyint        int    frames between keyframes of ``video`` (version 3; read as num_frames, one
                                  keyframe, for versions 1 and 2): a reader seeking to frame s decodes from
                                  frame keyint * (s // keyint)
           optional (extra fields are kept):
             source_height, source_width  int  the source video's frame size before the builder's resize (the
                                  micro-conditions' original resolution, SDXL-style); read as height, width when
                                  absent
             temporal_crop bool   False: samples always start at frame 0 (multi-view records, whose frame 0 is
                                  the input view; ``stiv_jax.data.multiview``); default True

**image** (``IMAGE_VERSION`` = 1) - a still image for text-to-image training:
  kind "image", image (bytes, PNG or JPEG), caption (str), meta {source, width, height}.

**latent** (``LATENT_VERSION`` = 1) - precomputed VAE latents and text embeddings (written by the encoder job,
``stiv_jax/data/encode.py``), read by the latent training path instead of pixels:
  kind     str    "latent"
  caption  str
  tensors  map    name -> {"shape": [int, ...], "dtype": str, "data": bytes (C order, host byte order = little endian)}
             video_latents        required  [latent_frames, latent_height, latent_width, latent_channels]
             text_embeddings      optional  [text_length, text_dim]
             text_mask            optional  [text_length] bool
             pooled_text          optional  [text_dim]
             first_frame_latents  optional  [1, latent_height, latent_width, latent_channels] (TI2V)
  meta     map    LATENT_META_FIELDS: source, start_sec, end_sec, fps, the encoded pixel clip's num_frames,
                  height, width, frame_stride, and latent_space (str, which VAE made the latents); any extra
                  fields (e.g. crop offsets, text_encoder) are kept.
dtypes are numpy names: float32, float16, bfloat16 (via ml_dtypes), int32, int64, uint8, bool.
"""
from __future__ import annotations

from typing import Mapping

import ml_dtypes
import msgpack
import numpy as np

CLIP_VERSION = 3
IMAGE_VERSION = 1
LATENT_VERSION = 1
SCHEMA_VERSION = CLIP_VERSION  # the skeleton's name for the clip version

CLIP_META_FIELDS = ("source", "start_sec", "end_sec", "start_frame", "scene_index", "fps", "width", "height",
                    "num_frames", "duration", "motion_score", "keyint")
CLIP_V2_META_FIELDS = CLIP_META_FIELDS[:-1]
CLIP_V1_META_FIELDS = ("source", "start_sec", "end_sec", "fps", "width", "height", "num_frames", "duration",
                       "motion_score")
META_FIELDS = CLIP_META_FIELDS
IMAGE_META_FIELDS = ("source", "width", "height")
LATENT_META_FIELDS = ("source", "start_sec", "end_sec", "fps", "num_frames", "height", "width", "frame_stride",
                      "latent_space")
LATENT_TENSORS_REQUIRED = ("video_latents",)
LATENT_TENSORS_OPTIONAL = ("text_embeddings", "text_mask", "pooled_text", "first_frame_latents")
LATENT_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
                 "int32": np.int32, "int64": np.int64, "uint8": np.uint8, "bool": np.bool_}


class RecordError(ValueError):
    """A record is not a valid record of the expected kind/version (corrupt or from other code)."""


def _check_meta(meta: Mapping, fields: tuple[str, ...], what: str) -> None:
    missing = [k for k in fields if k not in meta]
    if missing:
        raise ValueError(f"{what} metadata lacks fields {missing}")


def _pack(record: dict) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def _unpack(data: bytes) -> dict:
    try:
        record = msgpack.unpackb(data, raw=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise RecordError(f"record of {len(data)} bytes is not msgpack: {e}") from e
    if not isinstance(record, dict) or "version" not in record:
        raise RecordError("record is not a versioned msgpack map")
    return record


# ---------------------------------------------------------------------------------------------- clips
def encode_record(*, video: bytes, caption: str, meta: Mapping) -> bytes:
    """Serialises one clip record; ``meta`` must hold every field of ``CLIP_META_FIELDS``."""
    _check_meta(meta, CLIP_META_FIELDS, "clip")
    return _pack({"version": CLIP_VERSION, "kind": "clip", "video": video, "caption": caption, "meta": dict(meta)})


def decode_record(data: bytes) -> dict:
    """Parses a clip record (version 1, 2 or 3) into ``{version, kind, video, caption, meta}``; older versions'
    meta gains the fields they lack (``start_frame``, ``scene_index``, ``keyint``) with the values they imply."""
    record = _unpack(data)
    kind = record.get("kind", "clip")
    if kind != "clip":
        raise RecordError(f"expected a clip record, got kind {kind!r}")
    version = record["version"]
    fields = {1: CLIP_V1_META_FIELDS, 2: CLIP_V2_META_FIELDS, CLIP_VERSION: CLIP_META_FIELDS}
    if version not in fields:
        raise RecordError(f"clip record has schema version {version}, this code reads {sorted(fields)}")
    meta = record.get("meta", {})
    _check_meta(meta, fields[version], "clip")
    if version == 1:
        meta.setdefault("start_frame", int(round(meta["start_sec"] * meta["fps"])))
        meta.setdefault("scene_index", 0)
    if version < 3:   # the builder's x264 default gave a short clip one keyframe
        meta.setdefault("keyint", int(meta["num_frames"]))
    record["kind"] = "clip"
    return record


# ---------------------------------------------------------------------------------------------- images
def encode_image_record(*, image: bytes, caption: str, meta: Mapping) -> bytes:
    """Serialises one image record (``image`` is PNG or JPEG bytes)."""
    _check_meta(meta, IMAGE_META_FIELDS, "image")
    return _pack({"version": IMAGE_VERSION, "kind": "image", "image": image, "caption": caption,
                  "meta": dict(meta)})


def decode_image_record(data: bytes) -> dict:
    record = _unpack(data)
    if record.get("kind") != "image" or record["version"] != IMAGE_VERSION:
        raise RecordError(f"expected an image record version {IMAGE_VERSION}, got kind {record.get('kind')!r} "
                          f"version {record['version']}")
    _check_meta(record.get("meta", {}), IMAGE_META_FIELDS, "image")
    return record


# ---------------------------------------------------------------------------------------------- latents
def encode_tensor(array: np.ndarray) -> dict:
    """``{"shape", "dtype", "data"}`` of one array (dtype must be one of ``LATENT_DTYPES``)."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.name
    if dtype not in LATENT_DTYPES:
        raise ValueError(f"tensor dtype {dtype} is not storable; use one of {sorted(LATENT_DTYPES)}")
    return {"shape": list(array.shape), "dtype": dtype, "data": array.tobytes()}


def decode_tensor(entry: Mapping, name: str = "tensor") -> np.ndarray:
    """The array of an ``encode_tensor`` entry; a size mismatch raises ``RecordError`` naming the tensor."""
    dtype = LATENT_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        raise RecordError(f"{name}: unknown dtype {entry.get('dtype')!r}; known {sorted(LATENT_DTYPES)}")
    shape = tuple(int(s) for s in entry["shape"])
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(entry["data"]) != expected:
        raise RecordError(f"{name}: {len(entry['data'])} bytes for shape {shape} {entry['dtype']} "
                          f"({expected} expected)")
    return np.frombuffer(entry["data"], dtype=dtype).reshape(shape)


def encode_latent_record(*, tensors: Mapping[str, np.ndarray], caption: str, meta: Mapping) -> bytes:
    """Serialises precomputed latents (see the module docstring for tensor names and shapes)."""
    _check_meta(meta, LATENT_META_FIELDS, "latent")
    missing = [k for k in LATENT_TENSORS_REQUIRED if k not in tensors]
    unknown = [k for k in tensors if k not in LATENT_TENSORS_REQUIRED + LATENT_TENSORS_OPTIONAL]
    if missing or unknown:
        raise ValueError(f"latent record tensors: missing {missing}, unknown {unknown}; known "
                         f"{LATENT_TENSORS_REQUIRED + LATENT_TENSORS_OPTIONAL}")
    if np.ndim(tensors["video_latents"]) != 4:
        raise ValueError(f"video_latents must be [frames, height, width, channels], got shape "
                         f"{np.shape(tensors['video_latents'])}")
    return _pack({"version": LATENT_VERSION, "kind": "latent", "caption": caption, "meta": dict(meta),
                  "tensors": {k: encode_tensor(np.asarray(v)) for k, v in tensors.items()}})


def decode_latent_record(data: bytes) -> dict:
    """``{version, kind, caption, meta, tensors: {name: np.ndarray}}`` of a latent record."""
    record = _unpack(data)
    if record.get("kind") != "latent" or record["version"] != LATENT_VERSION:
        raise RecordError(f"expected a latent record version {LATENT_VERSION}, got kind {record.get('kind')!r} "
                          f"version {record['version']}")
    _check_meta(record.get("meta", {}), LATENT_META_FIELDS, "latent")
    record["tensors"] = {k: decode_tensor(v, k) for k, v in record.get("tensors", {}).items()}
    if "video_latents" not in record["tensors"]:
        raise RecordError("latent record has no video_latents")
    return record


def latent_shapes(data: bytes) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a latent record, without decoding the tensors."""
    record = _unpack(data)
    return {k: tuple(int(s) for s in v["shape"]) for k, v in record.get("tensors", {}).items()}


def record_kind(data: bytes) -> tuple[str, dict]:
    """``(kind, meta)`` of any record without decoding its payload."""
    record = _unpack(data)
    return record.get("kind", "clip"), record.get("meta", {})
