"""Prompt files (plain and VBench JSON), VBench file naming, task inputs, and the CLI's writers."""
import json
import os

import numpy as np
import pytest
from PIL import Image
from stiv_tiny import clip_path, tiny_bundle_and_params, tiny_config

from stiv_jax.data import video_io
from stiv_jax.diffusion.guidance import Guidance
from stiv_jax.sampling import inputs, prompts, run
from stiv_jax.sampling.generate import Generator, SolverSettings

# Entries in the format of vbench's VBench_full_info.json (copied from it).
VBENCH_ENTRIES = [
    {"prompt_en": "In a still frame, a stop sign", "dimension": ["temporal_flickering"]},
    {"prompt_en": "a bicycle accelerating to gain speed", "dimension": ["dynamic_degree"]},
    {"prompt_en": "a surfboard on the bottom of skis, front view", "dimension": ["spatial_relationship"],
     "auxiliary_info": {"spatial_relationship": {"spatial_relationship": {
         "object_a": "surfboard", "object_b": "skis", "relationship": "on the bottom of"}}}},
    {"prompt_en": "a bicycle accelerating to gain speed", "dimension": ["motion_smoothness"]},
]


def test_vbench_json_and_plain_prompt_files_are_read_in_order_without_duplicates(tmp_path):
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps(VBENCH_ENTRIES))
    entries = prompts.read_prompt_file(str(path))
    assert [e.prompt for e in entries] == ["In a still frame, a stop sign", "a bicycle accelerating to gain speed",
                                           "a surfboard on the bottom of skis, front view"]
    only = prompts.read_prompt_file(str(path), dimension="spatial_relationship")
    assert [e.prompt for e in only] == ["a surfboard on the bottom of skis, front view"]
    plain = tmp_path / "prompts.txt"
    plain.write_text("# demo prompts\na rabbit in a meadow\n\n  a cyclist at dusk  \n")
    assert [e.prompt for e in prompts.read_prompt_file(str(plain))] == ["a rabbit in a meadow", "a cyclist at dusk"]


def test_bad_prompt_files_name_the_flag_and_the_problem(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "x"}]')
    with pytest.raises(ValueError, match=r"--prompt_file=.*entry 0 has no 'prompt_en'"):
        prompts.read_prompt_file(str(bad))
    with pytest.raises(FileNotFoundError, match="--prompt_file"):
        prompts.read_prompt_file(str(tmp_path / "missing.txt"))


def test_vbench_file_names():
    assert prompts.vbench_filename("In a still frame, a stop sign", 3) == "In a still frame, a stop sign-3.mp4"


@pytest.fixture(scope="module")
def tiny_gen():
    config = tiny_config()
    bundle, params = tiny_bundle_and_params(config)
    return config, Generator(bundle, params, Guidance(mode="jit", scale=2.0), SolverSettings("euler", 2))


def test_prompt_file_writes_one_video_per_prompt_and_index_in_vbench_naming_and_resumes(tiny_gen, tmp_path):
    config, gen = tiny_gen
    path = tmp_path / "VBench_full_info.json"
    path.write_text(json.dumps(VBENCH_ENTRIES))
    out = str(tmp_path / "videos")
    clip, mask = inputs.task_clip("t2v", config)
    written = run.write_prompt_file(gen, config, "t2v", str(path), out, seed=0, clip=clip, frame_mask=mask,
                                    videos_per_prompt=2, batch_size=4)
    expected = sorted(f"{p}-{i}.mp4" for p in ["In a still frame, a stop sign", "a bicycle accelerating to gain "
                                               "speed", "a surfboard on the bottom of skis, front view"]
                      for i in range(2))
    assert sorted(os.listdir(out)) == expected and len(written) == 6
    frames = video_io.decode_frames(os.path.join(out, expected[0]))
    assert frames.shape == (4, 16, 16, 3)
    # Index i uses seed + i: the two videos of a prompt differ.
    a, b = (video_io.decode_frames(os.path.join(out, f"a bicycle accelerating to gain speed-{i}.mp4"))
            for i in range(2))
    assert not np.array_equal(a, b)
    os.remove(os.path.join(out, expected[0]))
    again = run.write_prompt_file(gen, config, "t2v", str(path), out, seed=0, clip=clip, frame_mask=mask,
                                  videos_per_prompt=2, batch_size=4)
    assert again == [os.path.join(out, expected[0])]           # only the missing video is made again


def test_single_prompt_writes_mp4_and_gif_for_a_video_task(tiny_gen, tmp_path):
    config, gen = tiny_gen
    clip, mask = inputs.task_clip("predict", config, video=clip_path())
    assert clip.shape == (4, 16, 16, 3) and mask.tolist() == [True, True, False, False]
    out = str(tmp_path / "pred.mp4")
    video = run.write_video(gen, config, "predict", "a man talks", out, seed=1, clip=clip, frame_mask=mask)
    np.testing.assert_array_equal(video[:2], clip[:2])
    assert video_io.decode_frames(out).shape == (4, 16, 16, 3)
    assert os.path.exists(str(tmp_path / "pred.gif"))


def test_image_tasks_read_the_image_into_frame_zero(tmp_path):
    config = tiny_config()
    png = str(tmp_path / "in.png")
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(png)
    clip, mask = inputs.task_clip("ti2v", config, image=png)
    assert clip.shape == (4, 16, 16, 3) and np.all(clip[0] == 200) and mask.tolist() == [True, False, False, False]
    clip, mask = inputs.task_clip("long", config)
    assert clip is None and not mask.any()              # long without an image: T2V key frames


def test_missing_inputs_name_the_flag():
    config = tiny_config()
    with pytest.raises(ValueError, match="--task=ti2v needs --image"):
        inputs.task_clip("ti2v", config)
    with pytest.raises(ValueError, match="--task=interpolate needs --video"):
        inputs.task_clip("interpolate", config)
    with pytest.raises(ValueError, match="--video=.*needs 4 frames at stride 2"):
        inputs.task_clip("predict", config, video=__file__)


def test_upsampler_cascade_writes_twice_the_frames_at_twice_the_fps(tiny_gen, tmp_path, monkeypatch):
    config, gen = tiny_gen
    clip, mask = inputs.task_clip("t2v", config)
    upsampler = run.Upsampler(gen, config)   # the tiny model stands in for a TUP run
    out = str(tmp_path / "t2v.mp4")
    video = run.write_video(gen, config, "t2v", "a man talks", out, seed=1, clip=clip, frame_mask=mask,
                            upsampler=upsampler)
    plain = run.sample_task(gen, config, "t2v", ["a man talks"], seed=1, clip=clip, frame_mask=mask)[0]
    assert video.shape == (8, 16, 16, 3)
    np.testing.assert_array_equal(video[0::2], plain)     # the main model's frames, at the even positions
    import av
    with av.open(out) as container:
        assert container.streams.video[0].average_rate == 2 * config.sample.fps
    # A run that never trained the upsample task is refused by name.
    t2v_only = config.copy_and_resolve_references()
    t2v_only.diffusion.tasks = dict(t2v=1.0)
    monkeypatch.setattr(run, "load_params", lambda workdir, use_ema=True: (t2v_only, None, None))
    with pytest.raises(ValueError, match=r"--upsampler='runs/t2v' did not train the upsample task"):
        run.Upsampler.load("runs/t2v")
