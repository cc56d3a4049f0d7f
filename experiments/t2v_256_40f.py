r"""T2V-256, 40 frames: longer clips from the 20-frame T2V with temporal RoPE interpolation (Fig. 6c).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/t2v_256_40f.py:size=XL --workdir=runs/t2v_256_40f_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/t2v_256_40f.py:runlocal --workdir=runs/local/t2v_256_40f
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/t2v_256_40f_{size}):
  python -m stiv_jax.train --config=experiments/t2v_256_40f.py:size=XL,unmasked --workdir=runs/t2v_256_40f_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/t2v_256_40f.py:size=M --topology=v5p-256

Starts from {root}/t2v_256_{size} (20 frames): every weight; temporal RoPE interpolated by 20/40
(interpolation beats extrapolation, Fig. 6c).

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="t2v_256_40f",
                                 resolution=256, frames=40, batch_size=1024, total_steps=400_000,
                                 rope_temporal_scale=common.interpolation(args, 20, 40))
    common.from_stage(args, config, {"t2v": "t2v_256"},
                      [(common.EVERYTHING, "t2v")])
    common.set_tasks(config, t2v=1.0)
    return config
