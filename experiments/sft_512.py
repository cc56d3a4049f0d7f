r"""SFT-512: the paper's "T2V-M-512 SFT" (Tab. 4): fine-tune the finished T2V-512 on a small captioned set.

Run (TPU pod; your shards from stiv_jax.data.build_shards at DIR):
  python -m stiv_jax.train --config=experiments/sft_512.py:size=M,data=DIR --workdir=runs/sft_512_M
CPU (tiny model on the demo shards; run the runlocal t2v_512 stage first):
  python -m stiv_jax.train --config=experiments/sft_512.py:runlocal --workdir=runs/local/sft_512
Fit check (what LoRA / partial freezing save against finetune=full):
  python -m stiv_jax.compile --config=experiments/sft_512.py:size=M,finetune=lora --topology=v5p-256
Modes: finetune=lora (default, adapters only), temporal (temporal attention only), full; base=stiv_512 for TI2V.

Every field is commented in experiments/common.py (stage_config, sft_config).
"""
from experiments import common


def get_config(arg=None):
    # The 512 stages interpolate RoPE from the 256 grid (t2v_512 was trained at scale 256 / 512).
    return common.sft_config(arg, stage="sft_512", resolution=512, base="t2v_512",
                             rope_spatial_scale=common.interpolation(common.parse_arg(arg, **common.SFT_DEFAULTS),
                                                                     256, 512))
