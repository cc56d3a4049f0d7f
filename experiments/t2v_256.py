r"""T2V-256: text-to-video at 256x256, 20 frames, from the T2I-256 EMA (App. B, Fig. 4).

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/t2v_256.py:size=XL --workdir=runs/t2v_256_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/t2v_256.py:runlocal --workdir=runs/local/t2v_256
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/t2v_256_{size}):
  python -m stiv_jax.train --config=experiments/t2v_256.py:size=XL,unmasked --workdir=runs/t2v_256_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/t2v_256.py:size=M --topology=v5p-256

Starts from {root}/t2i_256_{size}: every weight except temporal attention (new, output projection
zero-initialised so step 0 reproduces T2I frame by frame); the patch embed is inflated along time.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="t2v_256",
                                 resolution=256, frames=20, batch_size=1024, total_steps=400_000)
    common.from_stage(args, config, {"t2i": "t2i_256"},
                      [(common.TEMPORAL, "new"), (common.EVERYTHING, "t2i")], inflate_patch_embed=True)
    common.set_tasks(config, t2v=1.0)
    return config
