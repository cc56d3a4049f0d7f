r"""Exports a run's EMA weights as safetensors + config JSON + a model card, loadable without orbax.

  python -m stiv_jax.export --workdir=runs/t2v_256_XL --out=exports/t2v_256_XL [--dtype=bf16] [--step=N]

Writes to ``--out``:
  model.safetensors             every trainable parameter, keyed by its '/'-joined path (``dit/block_0/...``);
                                above ``--max_shard_gib`` split into ``model-0000i-of-0000n.safetensors`` with a
                                ``model.safetensors.index.json`` weight map (the Hugging Face layout)
  config.json                   the run's full config (rebuilds the model with ``build_model_bundle``) + export info
  README.md                     a short model card

``load_exported(dir) -> (config, params)`` reads it back; ``params`` plugs into ``ModelBundle.velocity`` exactly
like the checkpoint's ``ema_params``. Any safetensors reader (torch, numpy, flax) opens the weights.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors.flax import load_file, save_file

from stiv_jax.stages import surgery, transition

DTYPES = {"fp32": jnp.float32, "float32": jnp.float32, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def _shards(flat: dict, max_bytes: int) -> list[dict]:
    shards, current, size = [], {}, 0
    for name in sorted(flat):
        nbytes = flat[name].size * flat[name].dtype.itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = flat[name]
        size += nbytes
    return shards + ([current] if current else [])


def export(workdir: str, out: str, *, dtype: str = "fp32", step: int | None = None, use_ema: bool = True,
           max_shard_bytes: int = 4 * 1024 ** 3, merge_lora: bool = False) -> dict:
    """Exports the (EMA) parameters of ``workdir``'s latest (or ``step``) checkpoint to ``out``; returns a summary.

    ``merge_lora``: fold a LoRA run's adapters into their kernels (``stiv_jax.adapters.merge_lora``); the export
    then has the base architecture (its config has LoRA off).
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}; valid: {sorted(DTYPES)}")
    source = transition.open_source("export", workdir, use_ema=use_ema, step=step)
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    restored = transition.restore_params(source, {path: host for path in source.shapes})
    config = source.config
    if merge_lora:
        from stiv_jax import adapters
        if not any(adapters.is_adapter(k) for k in restored):
            raise ValueError(f"--merge_lora: {workdir} holds no LoRA adapters (config.finetune.lora.rank is 0)")
        restored, config = adapters.merge_lora(restored, config), adapters.base_config(config)
    flat = {path: jnp.asarray(value).astype(DTYPES[dtype]) for path, value in restored.items()}
    os.makedirs(out, exist_ok=True)
    shards = _shards(flat, max_shard_bytes)
    meta = {"format": "stiv_jax", "step": str(source.step), "weights": source.subtree, "dtype": dtype}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out, SINGLE), metadata=meta)
        files = [SINGLE]
    else:
        files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {}
        for name, shard in zip(files, shards):
            save_file(shard, os.path.join(out, name), metadata=meta)
            weight_map.update({k: name for k in shard})
        total = sum(v.size * v.dtype.itemsize for v in flat.values())
        with open(os.path.join(out, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total, **meta}, "weight_map": weight_map}, f, indent=1)
    for name in files:   # safetensors writes through a private temp file (mode 0600): make it readable as usual
        os.chmod(os.path.join(out, name), 0o644)
    num_params = sum(int(np.prod(v.shape)) for v in flat.values())
    summary = dict(workdir=os.path.abspath(workdir), step=source.step, weights=source.subtree, dtype=dtype,
                   tensors=len(flat), parameters=num_params, files=files)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"config": config.to_dict(), "export": summary}, f, indent=1, sort_keys=True)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(model_card(config, summary))
    return summary


def model_card(config, summary: dict) -> str:
    model = config.model
    return f"""# STIV DiT: {config.get('stage', 'run')} ({model.get('size', '') or 'custom size'})

Exported by `stiv_jax.export` from `{summary['workdir']}` at step {summary['step']} ({summary['weights']},
{summary['dtype']}): {summary['parameters'] / 1e6:.1f}M parameters in {summary['tensors']} tensors.

- Architecture: STIV diffusion transformer (arXiv 2412.07730): spatial + temporal self-attention, cross-attention
  to the text, shared AdaLN; velocity prediction by flow matching (t = 0 noise, t = 1 data).
- Training data: {config.data.frames} frame(s) at {config.data.resolution}x{config.data.resolution}, stride
  {config.data.frame_stride}; latent space `{config.latent.kind}`; text encoder `{config.text.kind}`.
- Files: {', '.join(summary['files'])}, `config.json` (the full training config).

Load:

```python
from stiv_jax.export import load_exported
from stiv_jax.training.model_bundle import build_model_bundle
config, params = load_exported("DIR")
bundle = build_model_bundle(config)
velocity = bundle.velocity(params, latents, timesteps, ids, mask)
```

Keys are '/'-joined parameter paths, e.g. `dit/patch_embed/proj/kernel`; any safetensors reader opens them.
"""


def is_export(directory: str) -> bool:
    """True for a directory written by ``export`` (the sampler's hook: load it with ``load_exported``)."""
    return any(os.path.exists(os.path.join(directory, name)) for name in (SINGLE, INDEX))


def load_exported(directory: str) -> tuple[ml_collections.ConfigDict, dict]:
    """``(config, params)`` of an export: the run's config and the nested parameter dict (``{'dit', 'text'}``)."""
    with open(os.path.join(directory, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    index = os.path.join(directory, INDEX)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(directory, SINGLE)):
        files = [SINGLE]
    else:
        raise FileNotFoundError(f"{directory} holds neither {SINGLE} nor {INDEX}: not a stiv_jax export")
    flat = {}
    for name in files:
        flat.update(load_file(os.path.join(directory, name)))
    params = surgery.unflatten(flat)
    params.setdefault("text", {})
    return config, params


def main(argv):
    del argv
    from absl import flags
    f = flags.FLAGS
    if f.adapter:
        from stiv_jax import adapters
        if f.merge_lora:
            raise ValueError("--adapter and --merge_lora exclude each other: adapters alone, or merged into the base")
        summary = adapters.export_adapter(f.workdir, f.out, step=f.step, use_ema=f.ema)
        print(f"exported {summary['parameters']:,} adapter parameters ({summary['tensors']} tensors, step "
              f"{summary['step']}, base {summary['base_fingerprint'][:16]}) to {f.out}")
        return
    summary = export(f.workdir, f.out, dtype=f.dtype, step=f.step, use_ema=f.ema,
                     max_shard_bytes=int(f.max_shard_gib * 1024 ** 3), merge_lora=f.merge_lora)
    print(f"exported {summary['parameters'] / 1e6:.1f}M parameters ({summary['tensors']} tensors, "
          f"{summary['dtype']}, step {summary['step']}) to {f.out}: {', '.join(summary['files'])}")


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_string("dtype", "fp32", "fp32 | bf16")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    flags.DEFINE_bool("ema", True, "Export the EMA weights (else the raw parameters).")
    flags.DEFINE_float("max_shard_gib", 4.0, "Largest safetensors file before splitting.")
    flags.DEFINE_bool("adapter", False, "Export a LoRA run's adapters alone, with the base's fingerprint.")
    flags.DEFINE_bool("merge_lora", False, "Fold a LoRA run's adapters into the base kernels (a plain export).")
    flags.mark_flags_as_required(["workdir", "out"])
    app.run(main)
