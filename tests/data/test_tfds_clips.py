"""The TFDS builder registers the clip shards as a dataset readable with ``tfds.data_source`` (no TensorFlow)."""
import sys

import numpy as np
import tensorflow_datasets as tfds

from conftest import demo_config
from stiv_jax.data import pipeline, schema, tfds_builder


def test_tfds_data_source_serves_the_same_records_and_feeds_the_pipeline(demo_shards, tmp_path):
    builder = tfds_builder.prepare(demo_shards, str(tmp_path))
    assert "tensorflow" not in sys.modules
    source = pipeline.open_source(demo_shards)
    originals = sorted(source[i] for i in range(len(source)))
    served = tfds.data_source("stiv_clips", split="train", data_dir=str(tmp_path))
    assert builder.info.splits["train"].num_examples == len(served) == len(originals)
    assert sorted(served[i]["record"] for i in range(len(served))) == originals
    example = served[0]
    meta = schema.decode_record(example["record"])["meta"]
    assert example["num_frames"] == meta["num_frames"] and np.isclose(example["fps"], meta["fps"])
    assert example["caption"].decode() == schema.decode_record(example["record"])["caption"]
    data = demo_config(demo_shards).data
    data.shards = f"tfds:stiv_clips@{tmp_path}"
    batch = next(pipeline.make_iterator(data, seed=0, tokenize=None))
    assert batch["video"].shape == (8, 8, 64, 64, 3) and batch["video"].std() > 5
