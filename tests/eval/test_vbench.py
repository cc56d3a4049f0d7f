"""The VBench harness: the real prompt suite, VBench's standard-mode layout, seeds and resuming, on a tiny model."""
import json
import os
import sys
import types
from unittest import mock

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import demo_config
from stiv_jax.data import video_io
from stiv_jax.eval import vbench as vb


def test_prompt_suite_is_vbenchs_946_entries_with_944_distinct_prompts():
    with open(vb.vbench_info_path()) as f:
        assert len(json.load(f)) == 946
    prompts = vb.load_vbench_prompts()
    assert len(prompts) == 944 and [p["index"] for p in prompts] == list(range(944))
    assert len({d for p in prompts for d in p["dimensions"]}) == 16
    color = vb.load_vbench_prompts(dimensions=("color",))
    assert len(color) == 85 and all("color" in p["dimensions"] for p in color)
    with pytest.raises(ValueError, match="unknown VBench dimensions.*colour"):
        vb.load_vbench_prompts(dimensions=("colour",))


def test_config_keys_are_checked():
    config = demo_config("unused")
    config.eval = {"vbench": {"samples_per_prompt": 2, "seeds": 3}}
    with pytest.raises(ValueError, match=r"unknown keys \['seeds'\]"):
        vb.vbench_config(config)


@pytest.fixture(scope="module")
def tiny_generate():
    """The harness's sampler over a randomly initialised 1-block DiT on 2-frame 16x16 videos, counting calls."""
    from stiv_jax.eval.generation import EvalSampler
    from stiv_jax.model.bundle import build_model_bundle
    config = demo_config("unused")
    config.model.depth, config.model.width, config.model.num_heads = 1, 32, 2
    config.text.kind, config.text.path, config.text.max_length = "token_embedding", "", 32
    config.text.dim, config.data.frames, config.data.resolution = 32, 2, 16
    bundle = build_model_bundle(config)
    params = nn.meta.unbox(jax.jit(bundle.init_boxed_params)(jax.random.key(0)))
    sampler = EvalSampler(config, bundle, num_steps=2, cfg_scale=2.0, batch_size=2)  # as vbench.main builds it
    calls = []

    def generate_fn(prompts, *, seeds):
        calls.append((tuple(prompts), tuple(seeds)))
        return sampler(params, prompts, seeds=seeds)
    return generate_fn, calls, sampler


def _placeholder_attribute(attr):
    if attr.startswith("__"):
        raise AttributeError(attr)
    return mock.MagicMock(name=attr)


def _vbench_finds(videos_dir, dimensions, tmp_path, monkeypatch):
    """Runs VBench's own ``build_full_info_json`` (standard mode) over ``videos_dir``; returns prompt -> videos.

    vbench's ``__init__`` imports decord and torchvision for scoring; building the file list needs neither, so
    placeholders stand in for them here."""
    for name in ("decord", "torchvision", "torchvision.transforms"):
        placeholder = types.ModuleType(name)
        placeholder.__getattr__ = _placeholder_attribute
        monkeypatch.setitem(sys.modules, name, placeholder)
    for name in [m for m in sys.modules if m == "vbench" or m.startswith("vbench.")]:
        monkeypatch.delitem(sys.modules, name)
    import vbench
    bench = vbench.VBench("cpu", vb.vbench_info_path(), str(tmp_path / "vbench_out"))
    info_path = bench.build_full_info_json(videos_dir, "stiv", list(dimensions))
    with open(info_path) as f:
        return {entry["prompt_en"]: entry["video_list"] for entry in json.load(f)}


def test_layout_is_found_by_vbench_and_runs_resume(tiny_generate, tmp_path, monkeypatch):
    generate_fn, calls, sampler = tiny_generate
    config = vb.default_vbench_config()
    config.samples_per_prompt, config.seed, config.max_prompts, config.dimensions = 2, 7, 2, ("color",)
    out = str(tmp_path / "vbench")
    counts = vb.sample_vbench(generate_fn, out, config, fps=8, log=lambda _: None)
    prompts = vb.load_vbench_prompts(dimensions=("color",))[:2]
    assert counts == {"prompts": 2, "videos_written": 4, "videos_present": 0, "prompts_sampled": 2}
    videos_dir = os.path.join(out, "videos")
    expected = sorted(f"{p['prompt']}-{i}.mp4" for p in prompts for i in range(2))
    assert sorted(os.listdir(videos_dir)) == expected
    assert not os.path.exists(os.path.join(out, ".staging"))
    # Seeds: video i of prompt p of the full suite uses seed + 5 p + i.
    assert calls == [((p["prompt"],) * 2, (7 + 5 * p["index"], 8 + 5 * p["index"])) for p in prompts]
    first = os.path.join(videos_dir, f"{prompts[0]['prompt']}-0.mp4")
    frames = video_io.decode_frames(first)
    assert frames.shape == (2, 16, 16, 3)
    manifest = json.load(open(os.path.join(out, "vbench_manifest.json")))
    assert manifest["samples_per_prompt"] == 2 and len(manifest["prompts"]) == 2

    found = _vbench_finds(videos_dir, ["color"], tmp_path, monkeypatch)
    for p in prompts:
        assert sorted(os.path.basename(v) for v in found[p["prompt"]]) == [f"{p['prompt']}-{i}.mp4" for i in (0, 1)]

    # Re-running does nothing; a lost video is regenerated alone and identically.
    calls.clear()
    assert vb.sample_vbench(generate_fn, out, config, fps=8, log=lambda _: None)["videos_written"] == 0
    assert calls == []
    os.remove(first)
    counts = vb.sample_vbench(generate_fn, out, config, fps=8, log=lambda _: None)
    assert counts["videos_written"] == 1 and counts["videos_present"] == 3
    assert calls == [((prompts[0]["prompt"],), (7 + 5 * prompts[0]["index"],))]
    np.testing.assert_array_equal(video_io.decode_frames(first), frames)
    assert sampler.num_compiled == 1   # batches of 2 and of 1 (padded) share one compiled model call


def test_resolution_resizes_written_videos(tiny_generate, tmp_path):
    generate_fn, _, _ = tiny_generate
    config = vb.default_vbench_config()
    config.samples_per_prompt, config.resolution = 1, 32
    prompts = [{"prompt": "a red car", "index": 0, "dimensions": ["color"]}]
    vb.sample_vbench(generate_fn, str(tmp_path), config, fps=8, prompts=prompts, log=lambda _: None)
    assert video_io.decode_frames(str(tmp_path / "videos" / "a red car-0.mp4")).shape == (2, 32, 32, 3)
    config.samples_per_prompt = 6
    with pytest.raises(ValueError, match="samples_per_prompt=6"):
        vb.sample_vbench(generate_fn, str(tmp_path), config, fps=8, prompts=prompts)
