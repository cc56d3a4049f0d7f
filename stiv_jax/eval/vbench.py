r"""VBench harness: samples the 946-entry VBench prompt suite in the layout VBench's standard mode scores.

  python -m stiv_jax.eval.vbench --workdir=runs/demo --out=runs/demo/vbench [--dimensions=color,scene]
      [--max_prompts=N] [--samples_per_prompt=5]

Then, on a machine that has VBench's models:
  vbench evaluate --videos_path=OUT/videos --dimension=DIM --mode=vbench_standard

Layout (read from ``vbench/__init__.py``, ``VBench.build_full_info_json``, mode ``vbench_standard``): ONE flat
folder holding ``{prompt}-{index}.mp4`` for index 0..4 of each prompt of ``VBench_full_info.json``; VBench picks the
videos of a dimension out of that folder by prompt, and takes the file suffix from the first entry it lists, so
the folder must hold videos only. 946 entries hold 944 distinct prompts (two appear under two dimensions): each
prompt is sampled once. The prompt list comes from the installed ``vbench`` package (``pip install --no-deps
vbench``; its ``__init__`` needs decord/torchvision, so we locate the JSON without importing it).

Resumable: a video is written to ``OUT/.staging`` and renamed into ``OUT/videos`` when complete; only missing
videos are sampled. Seeds: video ``i`` of prompt ``p`` (its position among the suite's distinct prompts) uses noise
seed ``eval.vbench.seed + 5 * p + i``, so a resumed or partial (``--dimensions``) run writes the same videos as one
full run.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
from typing import Callable

import ml_collections
import numpy as np
from PIL import Image

from stiv_jax.data import video_io

VBENCH_INFO_FILE = "VBench_full_info.json"
MAX_SAMPLES_PER_PROMPT = 5   # vbench_standard looks for indices 0..4 only
VIDEOS_SUBDIR = "videos"
STAGING_SUBDIR = ".staging"


def default_vbench_config() -> ml_collections.ConfigDict:
    """``config.eval.vbench`` defaults; a run's config overrides any of them.

    The values of experiments/base.py's ``eval.vbench`` (tests/experiments/test_base_config.py checks),
    kept for configs that lack the section: a checkpoint's saved config.json written before it existed.
    """
    config = ml_collections.ConfigDict()
    config.samples_per_prompt = 5   # VBench standard: 5 videos per prompt
    config.seed = 0                 # video i of prompt p uses noise seed seed + 5 * p + i
    config.num_steps = None         # sampling steps (None or 0: config.sample.num_steps)
    config.cfg_scale = None         # guidance (None: config.sample.cfg_scale)
    config.resolution = None        # written videos resized to this square side (None or 0: the model's resolution)
    config.fps = None               # fps written in the mp4 (None or 0: config.sample.fps)
    config.dimensions = ()          # VBench dimensions to sample (empty: all 16)
    config.max_prompts = None       # first N prompts only, for a quick look (None or 0: all)
    return config


def vbench_config(run_config) -> ml_collections.ConfigDict:
    """The defaults updated with ``run_config.eval.vbench`` when present (unknown keys are named)."""
    config = default_vbench_config()
    # ``.get``: ``run_config`` is a checkpoint's saved config.json, which may predate config.eval.vbench.
    overrides = (run_config.get("eval", None) or {}).get("vbench", None) or {}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"config.eval.vbench has unknown keys {unknown}; valid keys: {sorted(config)}")
    config.update(dict(overrides))
    return config


def vbench_info_path() -> str:
    """``VBench_full_info.json`` inside the installed ``vbench`` package."""
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the VBench prompt suite ships in the `vbench` package: pip install --no-deps vbench")
    path = os.path.join(list(spec.submodule_search_locations)[0], VBENCH_INFO_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing from the installed vbench package")
    return path


def load_vbench_prompts(path: str | None = None, *, dimensions=()) -> list[dict]:
    """Distinct prompts ``{'prompt', 'index', 'dimensions'}`` in suite order (``index``: position among the
    distinct prompts of the full suite), keeping those of ``dimensions`` (all if empty)."""
    with open(path or vbench_info_path()) as f:
        entries = json.load(f)
    prompts: dict[str, dict] = {}
    for entry in entries:
        item = prompts.setdefault(entry["prompt_en"], {"prompt": entry["prompt_en"], "index": len(prompts),
                                                       "dimensions": []})
        item["dimensions"] += [d for d in entry["dimension"] if d not in item["dimensions"]]
    known = {d for item in prompts.values() for d in item["dimensions"]}
    unknown = sorted(set(dimensions) - known)
    if unknown:
        raise ValueError(f"unknown VBench dimensions {unknown}; valid: {sorted(known)}")
    return [p for p in prompts.values() if not dimensions or set(dimensions) & set(p["dimensions"])]


def video_filename(prompt: str, index: int) -> str:
    """VBench's standard-mode name of sample ``index`` of ``prompt``."""
    if "/" in prompt or "\0" in prompt:
        raise ValueError(f"prompt cannot be a file name: {prompt!r}")
    return f"{prompt}-{index}.mp4"


GenerateFn = Callable[..., np.ndarray]   # (prompts, *, seeds) -> uint8 [batch, frames, height, width, 3]


def sample_vbench(generate_fn: GenerateFn, out_dir: str, config: ml_collections.ConfigDict, *, fps: float,
                  prompts: list[dict] | None = None, log: Callable[[str], None] = print) -> dict:
    """Samples every prompt of the suite that lacks videos under ``out_dir/videos``; returns counts.

    Args:
      generate_fn: ``generate_fn(prompts, seeds=[...])`` -> uint8 ``[len(prompts), frames, height, width, 3]``,
        video i sampled from noise seed ``seeds[i]`` alone.
      out_dir: output root (``videos/``, ``.staging/``, ``vbench_manifest.json``).
      config: ``eval.vbench`` settings (:func:`vbench_config`).
      fps: frame rate written into the mp4 files.
      prompts: the prompt list (default: :func:`load_vbench_prompts` with ``config.dimensions``).
    """
    samples = int(config.samples_per_prompt)
    if not 1 <= samples <= MAX_SAMPLES_PER_PROMPT:
        raise ValueError(f"config.eval.vbench.samples_per_prompt={samples}; VBench reads 1..{MAX_SAMPLES_PER_PROMPT}")
    prompts = prompts if prompts is not None else load_vbench_prompts(dimensions=tuple(config.dimensions))
    if config.max_prompts:
        prompts = prompts[:int(config.max_prompts)]
    videos_dir, staging_dir = os.path.join(out_dir, VIDEOS_SUBDIR), os.path.join(out_dir, STAGING_SUBDIR)
    os.makedirs(videos_dir, exist_ok=True)
    shutil.rmtree(staging_dir, ignore_errors=True)  # partial files of an interrupted run
    os.makedirs(staging_dir)
    counts = {"prompts": len(prompts), "videos_written": 0, "videos_present": 0, "prompts_sampled": 0}
    for number, item in enumerate(prompts):
        names = [video_filename(item["prompt"], i) for i in range(samples)]
        missing = [i for i, name in enumerate(names) if not os.path.exists(os.path.join(videos_dir, name))]
        counts["videos_present"] += samples - len(missing)
        if not missing:
            continue
        seeds = [int(config.seed) + MAX_SAMPLES_PER_PROMPT * item["index"] + i for i in missing]
        videos = np.asarray(generate_fn([item["prompt"]] * len(missing), seeds=seeds))
        for i, video in zip(missing, videos):
            staged = os.path.join(staging_dir, names[i])
            video_io.encode_mp4(_resize(video, config.resolution), fps=fps, path=staged)
            os.replace(staged, os.path.join(videos_dir, names[i]))
            counts["videos_written"] += 1
        counts["prompts_sampled"] += 1
        log(f"[{number + 1}/{len(prompts)}] {item['prompt']!r}: wrote {len(missing)} video(s)")
    shutil.rmtree(staging_dir, ignore_errors=True)
    manifest = dict(counts, samples_per_prompt=samples, seed=int(config.seed), dimensions=list(config.dimensions),
                    videos_path=os.path.abspath(videos_dir),
                    score_with=f"vbench evaluate --videos_path={os.path.abspath(videos_dir)} --dimension=DIM "
                               "--mode=vbench_standard",
                    prompts=[{"prompt": p["prompt"], "dimensions": p["dimensions"]} for p in prompts])
    with open(os.path.join(out_dir, "vbench_manifest.json.tmp"), "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(os.path.join(out_dir, "vbench_manifest.json.tmp"), os.path.join(out_dir, "vbench_manifest.json"))
    return counts


def _resize(video_thwc: np.ndarray, resolution: int | None) -> np.ndarray:
    if not resolution or video_thwc.shape[1:3] == (resolution, resolution):
        return video_thwc
    return np.stack([np.asarray(Image.fromarray(f).resize((resolution, resolution), Image.BICUBIC))
                     for f in video_thwc])


def main(argv):
    del argv
    from absl import flags

    from stiv_jax.eval.generation import EvalSampler
    from stiv_jax.sampling.run import load_params  # (stiv_jax.sample defines flags of the same names)
    f = flags.FLAGS
    run_config, bundle, params = load_params(f.workdir, use_ema=f.ema)
    config = vbench_config(run_config)
    for key in ("samples_per_prompt", "seed", "max_prompts", "resolution", "num_steps"):
        if getattr(f, key) is not None:
            config[key] = getattr(f, key)
    if f.dimensions:
        config.dimensions = tuple(d.strip() for d in f.dimensions.split(",") if d.strip())
    # One generator for the whole suite: the videos of a prompt are one batch (one compiled model call).
    sampler = EvalSampler(run_config, bundle, num_steps=config.num_steps, cfg_scale=config.cfg_scale,
                          batch_size=int(config.samples_per_prompt))
    generate_fn = functools.partial(sampler, params)
    counts = sample_vbench(generate_fn, f.out, config, fps=config.fps or run_config.sample.fps)
    print(f"{counts['prompts']} prompts: wrote {counts['videos_written']} videos, {counts['videos_present']} "
          f"were already complete; videos in {os.path.join(f.out, VIDEOS_SUBDIR)}")


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
    flags.DEFINE_string("out", None, "Output directory (videos/ and vbench_manifest.json).", required=True)
    flags.DEFINE_string("dimensions", "", "Comma-separated VBench dimensions (default: config or all).")
    flags.DEFINE_integer("samples_per_prompt", None, "Videos per prompt, 1..5 (default: config, 5).")
    flags.DEFINE_integer("seed", None, "Base noise seed (default: config, 0).")
    flags.DEFINE_integer("max_prompts", None, "Only the first N prompts (debugging).")
    flags.DEFINE_integer("resolution", None, "Resize written videos to this square side.")
    flags.DEFINE_integer("num_steps", None, "Sampling steps (default: config.sample.num_steps).")
    flags.DEFINE_bool("ema", True, "Use the EMA parameters.")
    app.run(main)
