r"""Multi-view: TI2V fine-tuned at 320x320 on Objaverse renders, input view + 6 novel views (§7).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/multiview.py:size=XL --workdir=runs/multiview_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/multiview.py:runlocal --workdir=runs/local/multiview
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/multiview.py:size=M --topology=v5p-256

Starts from {root}/stiv_256_{size} (TI2V-XL in the paper): every weight; spatial RoPE interpolated by 256/320.
Frame 0 is the input view, frames 1-6 the Zero123++ views (8 frames so that temporal patch 2 divides it,
INFERRED); the CFG negative view is a zero latent; 110k steps.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="multiview",
                                 resolution=320, frames=8, batch_size=1024, total_steps=110_000, masked=False,
                                 rope_spatial_scale=common.interpolation(args, 256, 320))
    common.from_stage(args, config, {"stiv": "stiv_256"},
                      [(common.EVERYTHING, "stiv")])
    common.set_tasks(config, multiview=1.0)
    config.diffusion.null_image = "zero"    # the CFG negative view is a zero latent (§7)
    config.sample.null_image = "zero"       # ... also when sampling
    config.diffusion.text_dropout = 1.0    # multi-view trains with the empty text only (§7)
    config.sample.cfg_scale = 3.5         # multi-view CFG scale (§7)
    return config
