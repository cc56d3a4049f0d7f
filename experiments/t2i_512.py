r"""T2I-512: text-to-image at 512x512, fully initialised from the T2I-256 EMA (Fig. 4).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/t2i_512.py:size=XL --workdir=runs/t2i_512_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/t2i_512.py:runlocal --workdir=runs/local/t2i_512
Unmasked fine-tune after the MaskDiT run (50k steps on all tokens, from {root}/t2i_512_{size}):
  python -m stiv_jax.train --config=experiments/t2i_512.py:size=XL,unmasked --workdir=runs/t2i_512_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/t2i_512.py:size=M --topology=v5p-256

Starts from {root}/t2i_256_{size}: every weight; spatial RoPE interpolated by 256/512.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="t2i_512",
                                 resolution=512, frames=1, batch_size=4096, total_steps=400_000,
                                 rope_spatial_scale=common.interpolation(args, 256, 512))
    common.from_stage(args, config, {"t2i": "t2i_256"},
                      [(common.EVERYTHING, "t2i")])
    common.set_tasks(config, t2v=1.0)
    return config
