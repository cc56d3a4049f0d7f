r"""Samples videos from a trained run, for any task of the model.

  python -m stiv_jax.sample --workdir=runs/demo --prompt="a cyclist rides past a van" --out=runs/demo/t2v.mp4
  python -m stiv_jax.sample --workdir=runs/demo --task=ti2v --image=first.png --prompt="..." --out=ti2v.mp4
  python -m stiv_jax.sample --workdir=runs/demo --task=predict --video=clip.mp4 --prompt="..." --out=pred.mp4
  python -m stiv_jax.sample --workdir=runs/demo --task=long --prompt="..." --out=long.mp4
  python -m stiv_jax.sample --workdir=runs/demo --prompt_file=VBench_full_info.json --out=runs/demo/vbench
  python -m stiv_jax.sample --workdir=runs/t2v --upsampler=runs/tup --prompt="..." --out=t2v_tup.mp4  # TUP cascade

Tasks: t2v, ti2v (--image), predict / interpolate / upsample (--video), multiview (--image, empty text), long
(key frames then interpolation; --image optional). A single prompt writes FILE.mp4 and FILE.gif; a prompt file
(plain lines or VBench's JSON) writes ``{prompt}-{index}.mp4`` into the --out directory, skipping existing ones.
Uses the EMA parameters unless --noema; solver, steps, shift and guidance default to ``config.sample``.
"""
from __future__ import annotations

from absl import app, flags, logging

from stiv_jax.diffusion.guidance import Guidance
from stiv_jax.sampling import inputs
from stiv_jax.sampling.generate import Generator, SolverSettings
from stiv_jax.sampling.run import Upsampler, load_params, write_prompt_file, write_video  # noqa: F401 (API)
from stiv_jax.training import compile_cache

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
flags.DEFINE_string("adapter", None, "LoRA adapter export (stiv_jax.export --adapter) applied to --workdir's base.")
flags.DEFINE_string("upsampler", None, "A temporal-upsampler run or export (experiments/temporal_upsampler.py) "
                    "cascaded after the sample: twice the frames, the sampled ones at the even positions.")


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if (FLAGS.prompt is None) == (FLAGS.prompt_file is None) and FLAGS.task != "multiview":
        raise app.UsageError("give exactly one of --prompt and --prompt_file")
    compile_cache.enable(workdir=FLAGS.workdir)   # WORKDIR/compile_cache, beside the training run's
    config, bundle, params = load_params(FLAGS.workdir, use_ema=FLAGS.ema, adapter=FLAGS.adapter)
    null_image = "zero" if FLAGS.task == "multiview" else None   # multi-view CFG: zero latent input view
    guidance = Guidance.from_config(config.sample, mode=FLAGS.guidance, scale=FLAGS.cfg,
                                    image_scale=FLAGS.cfg_image, renorm=FLAGS.renorm, null_image=null_image)
    solver = SolverSettings.from_config(config.sample, bundle.latent_shape, solver=FLAGS.solver,
                                        num_steps=FLAGS.steps, shift=FLAGS.shift)
    gen = Generator(bundle, params, guidance, solver)
    clip, frame_mask = inputs.task_clip(FLAGS.task, config, image=FLAGS.image, video=FLAGS.video)
    upsampler = Upsampler.load(FLAGS.upsampler, use_ema=FLAGS.ema) if FLAGS.upsampler else None
    if FLAGS.prompt_file is None:
        video = write_video(gen, config, FLAGS.task, FLAGS.prompt or "", FLAGS.out, seed=FLAGS.seed, clip=clip,
                            frame_mask=frame_mask, upsampler=upsampler)
        print(f"wrote {FLAGS.out} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, task {FLAGS.task})")
    else:
        written = write_prompt_file(gen, config, FLAGS.task, FLAGS.prompt_file, FLAGS.out, seed=FLAGS.seed,
                                    clip=clip, frame_mask=frame_mask, videos_per_prompt=FLAGS.videos_per_prompt,
                                    batch_size=FLAGS.batch_size, dimension=FLAGS.dimension, upsampler=upsampler)
        print(f"wrote {len(written)} videos to {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
