r"""STIV-512 (TI2V) at 512x512 from the T2V-512 EMA, without image dropout (Tab. 4 "STIV-M-512").

Run (TPU pod; sizes XL, XXL, M; add root=DIR for the stage workdirs):
  python -m stiv_jax.train --config=experiments/stiv_512.py:size=XL --workdir=runs/stiv_512_XL
CPU (tiny model, 32x32 demo clips; run the stages it starts from with runlocal first):
  python -m stiv_jax.train --config=experiments/stiv_512.py:runlocal --workdir=runs/local/stiv_512
Unmasked fine-tune after the MaskDiT run (100k steps on all tokens, from {root}/stiv_512_{size}):
  python -m stiv_jax.train --config=experiments/stiv_512.py:size=XL,unmasked --workdir=runs/stiv_512_unmasked_XL
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/stiv_512.py:size=M --topology=v5p-256
  python -m stiv_jax.compile --config=experiments/stiv_512.py:size=M,tpu=v5e --topology=v5e-256 --num_slices=4
Size M at 512 (BENCHMARKS.md "## compile"): tpu=v5p (default) runs the global batch 1024 as 2 micro-batches with the
paper's remat on v5p-256; tpu=v5e splits each sample over 2 chips (context parallelism, Ulysses) on 4 x v5e-256,
also with the paper's remat (experiments/common.py M_512_VIDEO_LAYOUTS).

Starts from {root}/t2v_512_{size}: every weight. Without image dropout the M-512 model goes nearly static
(App. E); stiv_jit_512 is the model to ship.

Every field is commented in experiments/common.py; only what makes this stage is set here.
"""
from experiments import common


def get_config(arg=None):
    args = common.parse_arg(arg, **common.STAGE_DEFAULTS)
    config = common.stage_config(args, stage="stiv_512",
                                 resolution=512, frames=20, batch_size=1024, total_steps=400_000,
                                 rope_spatial_scale=common.interpolation(args, 256, 512))
    common.from_stage(args, config, {"t2v": "t2v_512"},
                      [(common.EVERYTHING, "t2v")])
    common.set_tasks(config, ti2v=1.0)
    return config
