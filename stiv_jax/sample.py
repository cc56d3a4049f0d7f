r"""Samples videos from a trained run, for any task of the model.

  python -m stiv_jax.sample --workdir=runs/demo --prompt="a cyclist rides past a van" --out=runs/demo/t2v.mp4
  python -m stiv_jax.sample --workdir=runs/demo --task=ti2v --image=first.png --prompt="..." --out=ti2v.mp4
  python -m stiv_jax.sample --workdir=runs/demo --task=predict --video=clip.mp4 --prompt="..." --out=pred.mp4
  python -m stiv_jax.sample --workdir=runs/demo --task=long --prompt="..." --out=long.mp4
  python -m stiv_jax.sample --workdir=runs/demo --prompt_file=VBench_full_info.json --out=runs/demo/vbench

Tasks: t2v, ti2v (--image), predict / interpolate / upsample (--video), multiview (--image, empty text), long
(key frames then interpolation; --image optional). A single prompt writes FILE.mp4 and FILE.gif; a prompt file
(plain lines or VBench's JSON) writes ``{prompt}-{index}.mp4`` into the --out directory, skipping existing ones.
Uses the EMA parameters unless --noema; solver, steps, shift and guidance default to ``config.sample``.
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.data import video_io
from stiv_jax.diffusion.guidance import Guidance
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.sampling import inputs, prompts as prompts_lib
from stiv_jax.sampling.generate import Generator, SolverSettings, default_micro_conditions
from stiv_jax.sampling.long_video import generate_long
from stiv_jax.training import state as state_lib
from stiv_jax.training.model_bundle import build_model_bundle
from stiv_jax.training.optimizer import build_optimizer

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
flags.DEFINE_enum("task", "t2v", list(inputs.SAMPLING_TASKS), "What to generate.")
flags.DEFINE_string("prompt", None, "Text prompt.")
flags.DEFINE_string("prompt_file", None, "Prompts: plain lines, or VBench's VBench_full_info.json.")
flags.DEFINE_string("dimension", None, "With a VBench prompt file: only this dimension's prompts.")
flags.DEFINE_integer("videos_per_prompt", 1, "Prompt file: videos per prompt (VBench uses 5), seeds seed+index.")
flags.DEFINE_integer("batch_size", 1, "Prompt file: prompts sampled together.")
flags.DEFINE_string("image", None, "Given image (PNG/JPEG) for ti2v / multiview / long.")
flags.DEFINE_string("video", None, "Given video for predict / interpolate / upsample.")
flags.DEFINE_string("out", None, "Output .mp4 (a .gif is written beside it); a directory with --prompt_file.",
                    required=True)
flags.DEFINE_integer("steps", None, "Solver steps (default: config.sample.num_steps).")
flags.DEFINE_enum("solver", None, ["euler", "heun", "sde"], "ODE/SDE solver (default: config.sample.solver).")
flags.DEFINE_float("shift", None, "Timestep shift of the grid (default: from config.sample).")
flags.DEFINE_enum("guidance", None, ["jit", "sit", "none"], "CFG rule (default: config.sample.guidance).")
flags.DEFINE_float("cfg", None, "JIT-CFG scale / SIT text scale (default: config.sample.cfg_scale).")
flags.DEFINE_float("cfg_image", None, "SIT-CFG image scale (default: config.sample.cfg_image_scale).")
flags.DEFINE_bool("renorm", None, "CFG-renorm (default: config.sample.renorm).")
flags.DEFINE_integer("seed", 0, "Noise seed.")
flags.DEFINE_bool("ema", True, "Use the EMA parameters.")


def load_params(workdir: str, *, use_ema: bool = True):
    """``(config, bundle, params)`` of the latest checkpoint in ``workdir``, on one device."""
    config = ml_collections.ConfigDict(ckpt.restore_config(workdir))
    bundle = build_model_bundle(config)
    tx = build_optimizer(config.optim)
    mesh = mesh_lib.build_mesh(ml_collections.ConfigDict({"ici": {"data": 1}}), jax.devices()[:1])
    rules = mesh_lib.logical_rules(config.mesh)
    abstract, shardings = state_lib.state_shardings(lambda: bundle.init_boxed_params(jax.random.key(0)), tx,
                                                    mesh, rules)
    manager = ckpt.make_manager(workdir, async_save=False)
    state = ckpt.restore(manager, abstract_state=abstract, shardings=shardings)
    manager.close()
    return config, bundle, state.ema_params if use_ema else state.params


def sample_task(gen: Generator, config, task: str, prompt_batch: list[str], *, seed: int | list[int],
                clip: np.ndarray | None, frame_mask: np.ndarray, progress: bool = True) -> np.ndarray:
    """uint8 ``[batch, frames, height, width, 3]`` videos of ``task`` for ``prompt_batch``."""
    clean = None if clip is None else gen.encode(clip[None])
    if task == "multiview":
        prompt_batch = [""] * len(prompt_batch)   # the multi-view model is trained with empty text
    if task == "long":
        seeds = [seed] * len(prompt_batch) if isinstance(seed, int) else seed
        return np.concatenate([gen.to_uint8(generate_long(gen, config, p, seed=s, image_latents=clean,
                                                          progress=progress)) for p, s in zip(prompt_batch, seeds)])
    micro = default_micro_conditions(config, len(prompt_batch))
    latents = gen.latents(prompt_batch, micro=micro, seed=seed, clean=clean, frame_mask=frame_mask,
                          progress=progress)
    return gen.to_uint8(latents)


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if (FLAGS.prompt is None) == (FLAGS.prompt_file is None) and FLAGS.task != "multiview":
        raise app.UsageError("give exactly one of --prompt and --prompt_file")
    config, bundle, params = load_params(FLAGS.workdir, use_ema=FLAGS.ema)
    sample_config = config.sample
    null_image = "zero" if FLAGS.task == "multiview" else None   # multi-view CFG: zero latent input view
    guidance = Guidance.from_config(sample_config, mode=FLAGS.guidance, scale=FLAGS.cfg,
                                    image_scale=FLAGS.cfg_image, renorm=FLAGS.renorm, null_image=null_image)
    solver = SolverSettings.from_config(sample_config, bundle.latent_shape, solver=FLAGS.solver,
                                        num_steps=FLAGS.steps, shift=FLAGS.shift)
    gen = Generator(bundle, params, guidance, solver)
    clip, frame_mask = inputs.task_clip(FLAGS.task, config, image=FLAGS.image, video=FLAGS.video)
    fps = sample_config.fps

    if FLAGS.prompt_file is None:
        video = sample_task(gen, config, FLAGS.task, [FLAGS.prompt or ""], seed=FLAGS.seed, clip=clip,
                            frame_mask=frame_mask)[0]
        video_io.encode_mp4(video, fps=fps, path=FLAGS.out)
        video_io.write_gif(video, os.path.splitext(FLAGS.out)[0] + ".gif", fps=fps)
        print(f"wrote {FLAGS.out} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, task {FLAGS.task})")
        return

    entries = prompts_lib.read_prompt_file(FLAGS.prompt_file, dimension=FLAGS.dimension)
    jobs = [(e.prompt, i) for e in entries for i in range(FLAGS.videos_per_prompt)]
    todo = [(p, i) for p, i in jobs
            if not os.path.exists(os.path.join(FLAGS.out, prompts_lib.vbench_filename(p, i)))]
    os.makedirs(FLAGS.out, exist_ok=True)
    print(f"{len(entries)} prompts, {len(jobs)} videos, {len(jobs) - len(todo)} already in {FLAGS.out}")
    bs = max(1, FLAGS.batch_size)
    for start in tqdm(range(0, len(todo), bs), desc="prompts", unit="batch"):
        chunk = todo[start:start + bs]
        padded = chunk + [chunk[-1]] * (bs - len(chunk))   # one batch shape: one compilation
        # One seed per video (seed + index): a video does not depend on which prompts share its batch.
        videos = sample_task(gen, config, FLAGS.task, [p for p, _ in padded], seed=[FLAGS.seed + i for _, i in padded],
                             clip=clip, frame_mask=frame_mask, progress=False)
        for (prompt, index), video in zip(chunk, videos):
            video_io.encode_mp4(video, fps=fps, path=os.path.join(FLAGS.out, prompts_lib.vbench_filename(prompt,
                                                                                                         index)))
    print(f"wrote {len(todo)} videos to {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
