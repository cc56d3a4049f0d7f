r"""A TensorFlow Datasets builder exposing clip shards as a registered dataset (ArrayRecord, no TensorFlow).

  python -m stiv_jax.data.tfds_builder --shards=runs/demo_data --data_dir=runs/tfds

prepares ``stiv_clips`` (version ``VERSION``) under ``--data_dir`` from shards written by ``build_shards``. Read it
with ``tfds.data_source("stiv_clips", data_dir=...)`` (after ``import stiv_jax.data.tfds_builder``), or train on
it with ``config.data.shards = "tfds:stiv_clips@DATA_DIR"`` (the pipeline reads the ``record`` feature).

Features per example: ``record`` (the msgpack clip record of ``schema.py``, bytes) plus its metadata as scalar
features for filtering without decoding: caption, source (str), start_sec, end_sec, fps, duration, motion_score
(float32), start_frame, scene_index, num_frames, width, height (int32). Only features that need no TensorFlow
are used (Tensor, Text, Scalar), so preparation and reading work without it.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from etils import epath
from array_record.python import array_record_data_source

from stiv_jax.data import schema
from stiv_jax.data.shard_files import shard_paths

NAME = "stiv_clips"
FLOAT_FIELDS = ("start_sec", "end_sec", "fps", "duration", "motion_score")
INT_FIELDS = ("start_frame", "scene_index", "num_frames", "width", "height")


class StivClips(tfds.core.GeneratorBasedBuilder):
    """Clip records of ``build_shards`` as a TFDS dataset; pass ``shards=`` (dir or glob) to prepare it."""

    # tfds locates a builder's files through importlib_resources (not a dependency); the plain path is the same.
    code_path = epath.Path(__file__)
    VERSION = tfds.core.Version(f"{schema.CLIP_VERSION}.0.0")
    RELEASE_NOTES = {f"{schema.CLIP_VERSION}.0.0": f"clip records, schema version {schema.CLIP_VERSION}"}

    def __init__(self, *, shards: str | None = None, **kwargs):
        self._shards = shards
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"record": tfds.features.Tensor(shape=(), dtype=np.object_),
                    "caption": tfds.features.Text(), "source": tfds.features.Text()}
        features.update({k: tfds.features.Scalar(dtype=np.float32) for k in FLOAT_FIELDS})
        features.update({k: tfds.features.Scalar(dtype=np.int32) for k in INT_FIELDS})
        return tfds.core.DatasetInfo(builder=self, description=__doc__,
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager
        if not self._shards:
            raise ValueError(f"preparing {NAME} needs shards=DIR_OR_GLOB (the output of build_shards)")
        return {"train": self._generate_examples(shard_paths(self._shards, key="shards"))}

    def _generate_examples(self, paths: list[str]):
        source = array_record_data_source.ArrayRecordDataSource(paths)
        for index in range(len(source)):
            data = source[index]
            try:
                record = schema.decode_record(data)
            except (schema.RecordError, KeyError, ValueError):
                continue  # build_shards never writes such records; a foreign file is not fatal
            meta = record["meta"]
            example = {"record": data, "caption": record["caption"], "source": meta["source"]}
            example.update({k: np.float32(meta[k]) for k in FLOAT_FIELDS})
            example.update({k: np.int32(meta[k]) for k in INT_FIELDS})
            yield f"{meta['source']}:{int(meta['start_frame']):09d}:{index}", example


def prepare(shards: str, data_dir: str) -> StivClips:
    """Prepares (once) and returns the builder."""
    builder = StivClips(shards=shards, data_dir=data_dir)
    builder.download_and_prepare()
    return builder


class _RecordField:
    """Random access to the ``record`` bytes of a tfds data source (what the grain pipeline reads)."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        return self._source[index]["record"]

    def __getitems__(self, indices):
        return [e["record"] for e in self._source.__getitems__(indices)]


def record_source(spec: str, split: str = "train") -> _RecordField:
    """``"NAME@DATA_DIR"`` (or ``"NAME"``, default data dir) -> record bytes of its ``split``."""
    name, _, data_dir = spec.partition("@")
    return _RecordField(tfds.data_source(name, split=split, data_dir=data_dir or None))


def main(argv):
    del argv
    builder = prepare(FLAGS.shards, FLAGS.data_dir)
    print(f"{NAME} {builder.version}: {builder.info.splits['train'].num_examples} clips in {builder.data_dir}")


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("shards", None, "Clip shards (directory or glob) written by build_shards.", required=True)
    flags.DEFINE_string("data_dir", None, "TFDS data directory.", required=True)
    app.run(main)
