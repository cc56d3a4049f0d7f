r"""Samples a video from a trained run.

  python -m stiv_jax.sample --workdir=runs/demo --prompt="a cyclist rides past a van" --out=runs/demo/sample.mp4

Writes FILE.mp4 and FILE.gif beside it. Uses the EMA parameters unless --noema.
"""
from __future__ import annotations

import os

import jax
import ml_collections
from absl import app, flags

from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.data import video_io
from stiv_jax.parallel import mesh as mesh_lib
from stiv_jax.sampling.generate import generate
from stiv_jax.training import state as state_lib
from stiv_jax.training.model_bundle import build_model_bundle
from stiv_jax.training.optimizer import build_optimizer

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
flags.DEFINE_string("prompt", None, "Text prompt.", required=True)
flags.DEFINE_string("out", None, "Output .mp4 path (a .gif is written beside it).", required=True)
flags.DEFINE_integer("steps", None, "Sampling steps (default: config.sample.num_steps).")
flags.DEFINE_float("cfg", None, "Classifier-free guidance scale (default: config.sample.cfg_scale).")
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


def main(argv):
    del argv
    config, bundle, params = load_params(FLAGS.workdir, use_ema=FLAGS.ema)
    steps = FLAGS.steps or config.sample.num_steps
    cfg = config.sample.cfg_scale if FLAGS.cfg is None else FLAGS.cfg
    video = generate(bundle, params, [FLAGS.prompt], num_steps=steps, cfg_scale=cfg, seed=FLAGS.seed)[0]
    video_io.encode_mp4(video, fps=config.sample.fps, path=FLAGS.out)
    video_io.write_gif(video, os.path.splitext(FLAGS.out)[0] + ".gif", fps=config.sample.fps)
    print(f"wrote {FLAGS.out} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]})")


if __name__ == "__main__":
    app.run(main)
