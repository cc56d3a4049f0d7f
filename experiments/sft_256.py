r"""SFT-256: supervised fine-tune of the finished T2V-256 (or another 256 stage) on a small captioned set.

Run (TPU pod; your shards from stiv_jax.data.build_shards at DIR):
  python -m stiv_jax.train --config=experiments/sft_256.py:size=XL,data=DIR --workdir=runs/sft_256_XL
CPU (tiny model on the demo shards, from the runlocal t2v_256 run):
  python -m stiv_jax.train --config=experiments/sft_256.py:runlocal --workdir=runs/local/sft_256
Fit check (ahead-of-time compile for a TPU slice, on this host):
  python -m stiv_jax.compile --config=experiments/sft_256.py:size=M --topology=v5p-256
Modes: finetune=lora (default, adapters only), temporal (temporal attention only), full; base=stiv_256 for TI2V.

Every field is commented in experiments/common.py (stage_config, sft_config).
"""
from experiments import common


def get_config(arg=None):
    return common.sft_config(arg, stage="sft_256", resolution=256, base="t2v_256")
