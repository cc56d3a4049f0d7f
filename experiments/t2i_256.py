r"""T2I-256: text-to-image pretraining at 256x256, from scratch (STIV paper: recipe, Tab. 2 final row).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/t2i_256.py:size=XL --workdir=runs/t2i_256_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/t2i_256.py:runlocal --workdir=runs/local/t2i_256
Unmasked fine-tune after the MaskDiT run (50k steps on all tokens, from {root}/t2i_256_{size}):
  python -m stiv_jax.train --config=experiments/t2i_256.py:size=XL,unmasked --workdir=runs/t2i_256_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/t2i_256.py:size=M --topology=v5p-256

Starts from scratch.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="t2i_256",
                                 resolution=256, frames=1, batch_size=4096, total_steps=400_000)
    common.set_tasks(config, t2v=1.0)
    return config
