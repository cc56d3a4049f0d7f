r"""STIV-V2V video prediction: the first 4 frames given, text kept (§7; init STIV, +400k steps).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/video_prediction.py:size=XL --workdir=runs/video_prediction_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/video_prediction.py:runlocal --workdir=runs/local/video_prediction
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/video_prediction_{size}):
  python -m stiv_jax.train --config=experiments/video_prediction.py:size=XL,unmasked --workdir=runs/video_prediction_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/video_prediction.py:size=M --topology=v5p-256

Starts from {root}/stiv_256_{size}: every weight (the paper uses STIV-XXL). Frames 0-3 are replaced by their
clean latents and their loss masked.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="video_prediction",
                                 resolution=256, frames=20, batch_size=1024, total_steps=400_000)
    common.from_stage(args, config, {"stiv": "stiv_256"},
                      [(common.EVERYTHING, "stiv")])
    common.set_tasks(config, predict=1.0)
    return config
