r"""STIV-TUP temporal upsampler: every other frame given, the in-between frames generated (§7).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/temporal_upsampler.py:size=XL --workdir=runs/temporal_upsampler_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/temporal_upsampler.py:runlocal --workdir=runs/local/temporal_upsampler
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/temporal_upsampler_{size}):
  python -m stiv_jax.train --config=experiments/temporal_upsampler.py:size=XL,unmasked --workdir=runs/temporal_upsampler_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/temporal_upsampler.py:size=M --topology=v5p-256

Starts from {root}/stiv_256_{size}: every weight (the paper uses STIV-XL). Frames 0, 2, 4 ... are given (stride
2), text kept; cascaded after the main model it doubles the frame rate.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="temporal_upsampler",
                                 resolution=256, frames=20, batch_size=1024, total_steps=400_000)
    common.from_stage(args, config, {"stiv": "stiv_256"},
                      [(common.EVERYTHING, "stiv")])
    common.set_tasks(config, upsample=1.0)
    return config
