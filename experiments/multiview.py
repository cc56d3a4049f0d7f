r"""Multi-view: TI2V fine-tuned at 320x320 on Objaverse renders, input view + 6 novel views (§7).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/multiview.py:size=XL --workdir=runs/multiview_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/multiview.py:runlocal --workdir=runs/local/multiview
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/multiview.py:size=M --topology=v5p-256

Starts from {root}/stiv_256_{size} (TI2V-XL in the paper): every weight; spatial RoPE interpolated by 256/320 and
temporal RoPE by 20/8 (the 4 temporal tokens of the 7 views span the 10 the TI2V model was trained on).
Frame 0 is the input view, frames 1-6 the Zero123++ views (8 frames so that temporal patch 2 divides it,
INFERRED: frame 7 repeats frame 6); the CFG negative view is a zero latent; 110k steps. Data: orbit renders
(Objaverse in the paper) built into shards by ``stiv_jax.data.multiview``, which also renders procedural objects
on a CPU:
  python -m stiv_jax.data.multiview --procedural=200 --renders=runs/mv_renders --out=runs/mv_data --size=32
  python -m stiv_jax.train --config=experiments/multiview.py:runlocal --config.data.shards=runs/mv_data \
      --workdir=runs/local/multiview
(runlocal reads the first 4 of the 8 frames: the input view and 3 targets).

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="multiview",
                                 resolution=320, frames=8, batch_size=1024, total_steps=110_000, masked=False,
                                 rope_spatial_scale=common.interpolation(args, 256, 320),
                                 rope_temporal_scale=common.interpolation(args, 20, 8))
    common.from_stage(args, config, {"stiv": "stiv_256"},
                      [(common.EVERYTHING, "stiv")])
    common.set_tasks(config, multiview=1.0)
    config.diffusion.null_image = "zero"    # the CFG negative view is a zero latent (§7)
    config.diffusion.image_dropout = 0.08   # ... trained: 8% of samples see it (the JIT model's rate, §4.2)
    config.sample.null_image = "zero"       # ... also when sampling
    config.diffusion.text_dropout = 1.0    # multi-view trains with the empty text only (§7)
    config.sample.cfg_scale = 3.5         # multi-view CFG scale (§7)
    # Records of stiv_jax.data.multiview: 8 frames = input view + 6 target views + 1 pad, read at stride 1.
    config.data.frame_stride = 1           # the views, in order
    if not args.runlocal:
        config.data.shards = f"{args.root}/data/multiview"   # python -m stiv_jax.data.multiview --renders=...
    return config
