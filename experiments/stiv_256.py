r"""STIV-256 (TI2V): text-image-to-video at 256x256 by frame replacement, from the T2V-256 EMA (§4, Tab. 6).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/stiv_256.py:size=XL --workdir=runs/stiv_256_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/stiv_256.py:runlocal --workdir=runs/local/stiv_256
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/stiv_256_{size}):
  python -m stiv_jax.train --config=experiments/stiv_256.py:size=XL,unmasked --workdir=runs/stiv_256_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/stiv_256.py:size=M --topology=v5p-256

Starts from {root}/t2v_256_{size}: every weight (T2V init beats T2I init, Tab. 6). Frame 0 is replaced by the
clean image latent and its loss masked; no image dropout (see stiv_jit_512 for the JIT-CFG model).

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="stiv_256",
                                 resolution=256, frames=20, batch_size=1024, total_steps=400_000)
    common.from_stage(args, config, {"t2v": "t2v_256"},
                      [(common.EVERYTHING, "t2v")])
    common.set_tasks(config, ti2v=1.0)
    return config
