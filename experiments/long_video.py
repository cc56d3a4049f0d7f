r"""Long video: key-frame mode (stride 20, image dropout) and interpolation mode, trained jointly (§7).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/long_video.py:size=XL --workdir=runs/long_video_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/long_video.py:runlocal --workdir=runs/local/long_video
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/long_video_{size}):
  python -m stiv_jax.train --config=experiments/long_video.py:size=XL,unmasked --workdir=runs/long_video_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/long_video.py:size=M --topology=v5p-256

Starts from {root}/stiv_256_{size}: every weight. Key-frame mode samples frames at stride 20 with image
dropout; interpolation mode gives the first and last frame; (20 - 1) x 20 = 380 frames at sampling.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="long_video",
                                 resolution=256, frames=20, batch_size=1024, total_steps=400_000)
    common.from_stage(args, config, {"stiv": "stiv_256"},
                      [(common.EVERYTHING, "stiv")])
    common.set_tasks(config, long=1.0)  # the clip's frame stride picks key-frame or interpolation mode
    config.diffusion.image_dropout = 0.08  # key frames train T2V and TI2V (§7)
    return config
