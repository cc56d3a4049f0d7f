r"""LoRA adapters of a fine-tune run: exported alone (with the base's fingerprint), or merged; applying one to a
base (the sampler's ``--adapter``) is ``stiv_jax.checkpointing.exports.apply_adapter``.

  python -m stiv_jax.export --workdir=runs/sft_512_XL --out=exports/sft_adapter --adapter
  python -m stiv_jax.export --workdir=runs/sft_512_XL --out=exports/sft_merged --merge_lora
  python -m stiv_jax.sample --workdir=runs/stiv_512_XL --adapter=exports/sft_adapter --prompt="..." --out=a.mp4

An adapter export holds ``adapter.safetensors`` (the ``lora_a`` / ``lora_b`` leaves, '/'-joined paths) whose
metadata carries ``base_fingerprint``: the SHA-256 of the base parameters' names, shapes and float32 values, so an
adapter is refused on any other base; and ``config.json`` (the fine-tune run's config, which rebuilds the adapted
model). A merged export folds ``W + (alpha / r) A B`` into each kernel: a plain export of the base architecture.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np
from safetensors.numpy import save_file

from stiv_jax.checkpointing.exports import ADAPTER, FORMAT, fingerprint, is_adapter
from stiv_jax.stages import transition
from stiv_jax.training.finetune import LORA_PATTERN

def lora_scale(config) -> float:
    lora = config.finetune.lora
    alpha = lora.get("alpha", None)   # a saved config.json may lack it; None (the base's value): the rank
    return float(lora.rank if alpha is None else alpha) / int(lora.rank)


def merge_lora(flat: dict, config) -> dict:
    """``{path: array}`` with every adapter pair folded into its kernel (``W + scale A B``) and removed.

    ``A`` is ``[*lead, prod(in), r]``, ``B`` ``[*lead, r, prod(out)]`` (stored flat) and the kernel
    ``[*lead, *in, *out]`` (``lead``: the scanned ``layers`` axis, if any).
    """
    scale = lora_scale(config)
    out = {k: np.asarray(v) for k, v in flat.items() if not is_adapter(k)}
    for name in sorted(k for k in flat if k.endswith("/lora_a")):
        module = name[:-len("/lora_a")]
        a, b = np.asarray(flat[name], np.float32), np.asarray(flat[module + "/lora_b"], np.float32)
        kernel = out[module + "/kernel"]
        delta = np.matmul(a, b).reshape(kernel.shape) * scale
        out[module + "/kernel"] = (kernel.astype(np.float32) + delta).astype(kernel.dtype)
    return out


def base_config(config) -> ml_collections.ConfigDict:
    """``config`` with LoRA off: the architecture of the base (and of a merged export)."""
    config = ml_collections.ConfigDict(config.to_dict())
    if "finetune" in config:
        config.finetune.lora.rank = 0
        config.finetune.trainable = ()
    return config


def export_adapter(workdir: str, out: str, *, step: int | None = None, use_ema: bool = True) -> dict:
    """Writes the adapters of ``workdir``'s latest (or ``step``) checkpoint to ``out``; returns a summary.

    Refused when the run trains anything besides the adapters (``config.finetune.trainable``): the adapters alone
    would not reproduce it; use ``--merge_lora`` for such runs.
    """
    source = transition.open_source("export", workdir, use_ema=use_ema, step=step)
    # ``.get``: the run's saved config.json, which has no ``finetune`` when written before every config had one.
    trainable = [p for p in source.config.get("finetune", {}).get("trainable", ()) or () if p != LORA_PATTERN]
    if not any(is_adapter(k) for k in source.shapes):
        raise ValueError(f"{workdir} holds no LoRA adapters (config.finetune.lora.rank is 0); export it whole")
    if trainable:
        raise ValueError(f"{workdir} also trains base weights (config.finetune.trainable={trainable}): an "
                         f"adapter alone would not reproduce it; export with --merge_lora")
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    flat = {k: np.asarray(v) for k, v in transition.restore_params(source, {p: host for p in source.shapes}).items()}
    adapters = {k: v for k, v in flat.items() if is_adapter(k)}
    meta = {"format": FORMAT, "base_fingerprint": fingerprint(flat), "step": str(source.step),
            "weights": source.subtree, "rank": str(source.config.finetune.lora.rank),
            "alpha": str(lora_scale(source.config) * source.config.finetune.lora.rank)}
    os.makedirs(out, exist_ok=True)
    save_file(adapters, os.path.join(out, ADAPTER), metadata=meta)
    os.chmod(os.path.join(out, ADAPTER), 0o644)
    summary = dict(workdir=os.path.abspath(workdir), step=source.step, tensors=len(adapters),
                   parameters=int(sum(v.size for v in adapters.values())), base_fingerprint=meta["base_fingerprint"],
                   files=[ADAPTER])
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"config": source.config.to_dict(), "export": summary}, f, indent=1, sort_keys=True)
    return summary
