"""Multi-view data: procedural orbit renders, the record builder (input view + the paper's six target views), its
handling of bad objects, and the multi-view stage training on what it writes."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from stiv_jax.data import multiview, orbit_render, pipeline, schema, video_io
from stiv_jax.encoders.text_embedding import tokenize_bytes


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-9))


def test_procedural_renders_are_deterministic_centred_and_differ_by_view():
    obj = orbit_render.random_object(np.random.default_rng(3))
    a = orbit_render.render(obj, azimuth=40, elevation=10, size=32)
    np.testing.assert_array_equal(a, orbit_render.render(obj, azimuth=400, elevation=10, size=32))
    background = np.all(a == orbit_render.BACKGROUND, axis=-1)
    assert background[0].all() and background[-1].all() and background[:, 0].all()   # the object is inside
    ys, xs = np.nonzero(~background)
    assert 0.1 < (~background).mean() < 0.7 and abs(ys.mean() - 16) < 5 and abs(xs.mean() - 16) < 5
    views = [orbit_render.render(obj, azimuth=az, elevation=el, size=32) for az, el in multiview.TARGET_VIEWS]
    assert all(psnr(views[i], views[i + 1]) < 30 for i in range(5))   # every target view shows something new
    with pytest.raises(ValueError, match="elevation"):
        orbit_render.render(obj, azimuth=0, elevation=90, size=32)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mv")
    renders, out = str(root / "renders"), str(root / "shards")
    multiview.write_procedural_renders(out=renders, num_objects=6, size=32, seed=0)
    return renders, out, multiview.build(renders=renders, out=out, size=32, num_shards=2)


def records(out):
    source = pipeline.open_source(out)
    return [schema.decode_record(source[i]) for i in range(len(source))]


def test_a_record_holds_the_input_view_and_the_six_target_views_in_the_paper_layout(built):
    renders, out, summary = built
    assert summary["clips"] == 6 and summary["skipped"] == 0
    record = next(r for r in records(out) if r["meta"]["source"] == "object_00002")
    meta = record["meta"]
    assert meta["num_frames"] == 8 and meta["num_views"] == 7 and meta["temporal_crop"] is False
    np.testing.assert_allclose([v[0] for v in meta["views"]], [0, 30, 90, 150, 210, 270, 330], atol=1e-3)
    np.testing.assert_allclose([v[1] for v in meta["views"][1:]], [30, -20, 30, -20, 30, -20], atol=1e-3)
    # The stored frames are the renders of those cameras, in the layout order (the files on disk are shuffled).
    frames = video_io.decode_frames(record["video"])
    views = json.load(open(os.path.join(renders, "object_00002", "views.json")))["views"]
    base = views[0]["azimuth"]
    for frame, (rel, el) in zip(frames[:7], meta["views"]):
        source = next(v for v in views if abs((v["azimuth"] - base - rel + 180) % 360 - 180) < 1e-2
                      and abs(v["elevation"] - el) < 1e-2)
        scores = {v["file"]: psnr(frame, np.asarray(Image.open(os.path.join(renders, "object_00002", v["file"]))
                                                    .convert("RGB"))) for v in views}
        # H.264 4:2:0 at 32 pixels costs a few dB on saturated edges; the right render is still far the closest.
        assert max(scores, key=scores.get) == source["file"] and scores[source["file"]] > 25
    assert psnr(frames[7], frames[6]) > 40   # the pad frame repeats the last view (up to the codec)


def test_bad_objects_are_skipped_counted_and_named(built, tmp_path):
    renders, _, _ = built
    import shutil
    bad = str(tmp_path / "renders")
    shutil.copytree(renders, bad)
    with open(os.path.join(bad, "object_00000", "001.png"), "wb") as f:
        f.write(b"\x89PNG not really")                       # damaged image
    spec = json.load(open(os.path.join(bad, "object_00001", "views.json")))
    views = spec["views"]
    base = views[0]["azimuth"]
    spec["views"] = [v for v in views if not (abs((v["azimuth"] - base - 90 + 180) % 360 - 180) < 1e-2
                                              and abs(v["elevation"] + 20) < 1e-2)]   # no +90 view
    json.dump(spec, open(os.path.join(bad, "object_00001", "views.json"), "w"))
    open(os.path.join(bad, "object_00003", "views.json"), "w").write("{not json")
    os.remove(os.path.join(bad, "object_00004", "views.json"))
    summary = multiview.build(renders=bad, out=str(tmp_path / "shards"), size=32, num_shards=1)
    assert summary["clips"] == 2 and summary["skipped"] == 4
    why = dict(summary["skipped_inputs"])
    assert "no render within 5 degrees of azimuth +90" in why["object_00001"]
    assert "malformed views.json" in why["object_00003"] and why["object_00004"] == "no views.json"
    assert why["object_00000"].startswith("unreadable image") or "within" in why["object_00000"]
    with pytest.raises(FileNotFoundError, match="--renders"):
        multiview.build(renders=str(tmp_path / "missing"), out=str(tmp_path / "x"))


def test_multiview_stage_trains_on_the_built_records(built, tmp_path):
    """experiments/multiview.py:runlocal from scratch on the procedural records: the pipeline keeps the input view
    as frame 0 (no temporal crop), and two optimizer steps run with the empty text and the zero null image."""
    _, out, _ = built
    from experiments import multiview as stage
    from stiv_jax.train import train
    config = stage.get_config("runlocal")
    with config.unlocked():
        config.data.shards, config.data.num_threads, config.data.prefetch = out, 1, 2
        config.init.sources, config.init.assign = {}, ()
        config.total_steps, config.checkpoint_every, config.sample_every, config.log_every = 2, 2, 0, 1
    batch = next(pipeline.make_iterator(config.data, seed=0, tokenize=lambda t: tokenize_bytes(t, 8)))
    stored = records(out)
    for video, record_id in zip(batch["video"], batch["record_id"]):
        first = video_io.decode_frames(stored[int(record_id)]["video"], num_frames=1)[0]
        assert psnr(video[0], first) > 40   # frame 0 is the input view
    train(config, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and np.isfinite(rows[-1]["loss"])
