r"""Long video: key frames at stride 19 (the paper's "20") and interval interpolation, trained jointly (§7).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/long_video.py:size=XL --workdir=runs/long_video_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/long_video.py:runlocal --workdir=runs/local/long_video
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/long_video_{size}):
  python -m stiv_jax.train --config=experiments/long_video.py:size=XL,unmasked --workdir=runs/long_video_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/long_video.py:size=M --topology=v5p-256

Starts from {root}/stiv_256_{size}: every weight. One source, two strides mixed per sample
(``data.frame_strides``): consecutive frames (stride 1) train the interpolation mode (first and last frame
given), and frames at stride 19 train the key-frame mode (image dropout: T2V and TI2V). 19 is the paper's
"stride 20" read so that 20 consecutive frames (19 gaps) span exactly two neighbouring key frames; the sampler
fills every interval at stride 1 and keeps shared key frames once: (20 - 1) x 19 + 1 = 362 frames (the paper
counts (20 - 1) x 20 = 380 with the shared frames). Key-frame clips need 19 x 19 + 1 = 362 source frames; shorter
clips train the interpolation mode only.

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
    gaps = config.data.frames - 1
    config.data.frame_stride = 1           # interpolation mode: consecutive frames (§7)
    config.data.frame_strides = ((1, 0.5), (gaps, 0.5))  # half interval clips, half key-frame clips
    config.diffusion.long_keyframe_stride = gaps  # key frames one interval (frames - 1 gaps at stride 1) apart
    return config
