r"""Exports a run's EMA weights as safetensors + config JSON + a model card, loadable without orbax.

  python -m stiv_jax.export --workdir=runs/t2v_256_XL --out=exports/t2v_256_XL [--dtype=bf16] [--step=N]

Writes to ``--out``:
  model.safetensors             every trainable parameter, keyed by its '/'-joined path (``dit/block_0/...``);
                                above ``--max_shard_gib`` split into ``model-0000i-of-0000n.safetensors`` with a
                                ``model.safetensors.index.json`` weight map (the Hugging Face layout)
  config.json                   the run's full config (rebuilds the model with ``build_model_bundle``) + export info
  README.md                     a short model card

``load_exported(dir) -> (config, params)`` (``stiv_jax.checkpointing.exports``) reads it back; ``params`` plugs into ``ModelBundle.velocity`` exactly
like the checkpoint's ``ema_params``. Any safetensors reader (torch, numpy, flax) opens the weights.

Nothing stale, nothing damaged: the export is written into a fresh ``<out>.staging-*`` directory beside ``--out``
and swapped in whole (an earlier export there is replaced, never mixed with the new files). The safetensors
bytes are deterministic (header keys sorted), so two exports of the same step are byte-equal. Without
``--step``, a newest checkpoint that fails its integrity check, fails to read or holds non-finite weights is
skipped with one line and the newest intact step is exported.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.checkpointing import integrity
from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.checkpointing.exports import INDEX, SINGLE, is_export
from stiv_jax.stages import transition

DTYPES = {"fp32": jnp.float32, "float32": jnp.float32, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16}
SAFETENSORS_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64", "int32": "I32",
                      "int64": "I64", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Writes a safetensors file with a canonical header (metadata and tensors in sorted key order, compact JSON
    padded to 8 bytes), so equal tensors give equal bytes; ``safetensors.save_file`` orders metadata randomly."""
    header, offset = {"__metadata__": dict(sorted(metadata.items()))}, 0
    arrays = {name: np.ascontiguousarray(np.asarray(tensors[name])) for name in sorted(tensors)}
    for name, array in arrays.items():
        header[name] = {"dtype": SAFETENSORS_DTYPES[str(array.dtype)], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for array in arrays.values():
            f.write(array.tobytes())


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


def restore_newest_intact(workdir: str, *, step: int | None, use_ema: bool, log: Callable[[str], None] = print):
    """``(source, flat params on the host)`` of ``step``, or of the newest step that verifies, reads and is finite.

    A damaged step given by ``step`` is an error; without ``step`` it is skipped with one line to ``log``.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} does not exist")
    host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    candidates = [step] if step is not None else list(reversed(ckpt.complete_steps(workdir))) or [None]
    for candidate in candidates:
        try:
            source = transition.open_source("export", workdir, use_ema=use_ema, step=candidate, log=log)
            return source, transition.restore_params(source, {path: host for path in source.shapes})
        except ckpt.CheckpointDamagedError as err:
            if step is not None or candidate == candidates[-1]:
                raise
            log(f"{err}; falling back to an older step")
    raise AssertionError("unreachable")


def export(workdir: str, out: str, *, dtype: str = "fp32", step: int | None = None, use_ema: bool = True,
           max_shard_bytes: int = 4 * 1024 ** 3, log: Callable[[str], None] = print,
           merge_lora: bool = False) -> dict:
    """Exports the (EMA) parameters of ``workdir``'s newest intact (or ``step``) checkpoint to ``out``; returns a
    summary. ``out`` is replaced whole (see the module doc); a non-empty ``out`` that is no export is refused.

    ``merge_lora``: fold a LoRA run's adapters into their kernels (``stiv_jax.adapters.merge_lora``); the export
    then has the base architecture (its config has LoRA off).
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r}; valid: {sorted(DTYPES)}")
    if os.path.isdir(out) and os.listdir(out) and not is_export(out):
        raise FileExistsError(f"--out={out!r} is a non-empty directory that holds no export; choose another --out")
    source, restored = restore_newest_intact(workdir, step=step, use_ema=use_ema, log=log)
    config = source.config
    if merge_lora:
        from stiv_jax import adapters
        if not any(adapters.is_adapter(k) for k in restored):
            raise ValueError(f"--merge_lora: {workdir} holds no LoRA adapters (config.finetune.lora.rank is 0)")
        restored, config = adapters.merge_lora(restored, config), adapters.base_config(config)
    flat = {path: np.asarray(jnp.asarray(value).astype(DTYPES[dtype])) for path, value in restored.items()}
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out)) + ".staging-", dir=parent)
    try:
        summary = _write_export(staging, flat, source=source, config=config, workdir=workdir, dtype=dtype,
                                max_shard_bytes=max_shard_bytes)
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _write_export(directory: str, flat: dict, *, source, config, workdir: str, dtype: str,
                  max_shard_bytes: int) -> dict:
    os.chmod(directory, 0o755)   # mkdtemp makes it 0700
    shards = _shards(flat, max_shard_bytes)
    meta = {"format": "stiv_jax", "step": str(source.step), "weights": source.subtree, "dtype": dtype}
    if len(shards) == 1:
        files = [SINGLE]
    else:
        files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        total = sum(v.nbytes for v in flat.values())
        weight_map = {k: name for name, shard in zip(files, shards) for k in sorted(shard)}
        with open(os.path.join(directory, INDEX), "w") as f:
            json.dump({"metadata": {"total_size": total, **meta}, "weight_map": weight_map}, f, indent=1,
                      sort_keys=True)
    for name, shard in zip(files, shards):
        save_safetensors(os.path.join(directory, name), shard, meta)
    num_params = sum(int(np.prod(v.shape)) for v in flat.values())
    sha256 = {name: integrity.file_sha256(os.path.join(directory, name)) for name in files}
    summary = dict(workdir=os.path.abspath(workdir), step=source.step, weights=source.subtree, dtype=dtype,
                   tensors=len(flat), parameters=num_params, files=files, sha256=sha256)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({"config": config.to_dict(), "export": summary}, f, indent=1, sort_keys=True)
    with open(os.path.join(directory, "README.md"), "w") as f:
        f.write(model_card(config, summary))
    return summary


def _swap_in(staging: str, out: str) -> None:
    """Replaces ``out`` by ``staging`` with two renames (the old export is deleted only once the new is in)."""
    if not os.path.exists(out):
        os.rename(staging, out)
        return
    old = tempfile.mkdtemp(prefix=os.path.basename(os.path.abspath(out)) + ".old-",
                           dir=os.path.dirname(os.path.abspath(out)))
    os.rmdir(old)
    os.rename(out, old)
    os.rename(staging, out)
    shutil.rmtree(old)


def model_card(config, summary: dict) -> str:
    model = config.model   # the run's saved config.json: ``.get`` for keys it may predate ("" stage: 'run')
    return f"""# STIV DiT: {config.get('stage', '') or 'run'} ({model.get('size', '') or 'custom size'})

Exported by `stiv_jax.export` from `{summary['workdir']}` at step {summary['step']} ({summary['weights']},
{summary['dtype']}): {summary['parameters'] / 1e6:.1f}M parameters in {summary['tensors']} tensors.

- Architecture: STIV diffusion transformer (arXiv 2412.07730): spatial + temporal self-attention, cross-attention
  to the text, shared AdaLN; velocity prediction by flow matching (t = 0 noise, t = 1 data).
- Training data: {config.data.frames} frame(s) at {config.data.resolution}x{config.data.resolution}, stride
  {config.data.frame_stride}; latent space `{config.latent.kind}`; text encoder `{config.text.kind}`.
- Files: {', '.join(summary['files'])}, `config.json` (the full training config).

Load:

```python
from stiv_jax.checkpointing.exports import load_exported
from stiv_jax.model.bundle import build_model_bundle
config, params = load_exported("DIR")
bundle = build_model_bundle(config)
velocity = bundle.velocity(params, latents, timesteps, ids, mask)
```

Keys are '/'-joined parameter paths, e.g. `dit/patch_embed/proj/kernel`; any safetensors reader opens them.
"""


def main(argv):
    del argv
    from absl import flags, logging
    f = flags.FLAGS
    if not f["verbosity"].present:   # orbax logs every file at INFO and warns of the data state export leaves unread
        logging.set_verbosity(logging.ERROR)
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
    from absl import flags
    flags.DEFINE_string("workdir", None, "Run directory with checkpoints/.")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_string("dtype", "fp32", "fp32 | bf16")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    flags.DEFINE_bool("ema", True, "Export the EMA weights (else the raw parameters).")
    flags.DEFINE_float("max_shard_gib", 4.0, "Largest safetensors file before splitting.")
    flags.DEFINE_bool("adapter", False, "Export a LoRA run's adapters alone, with the base's fingerprint.")
    flags.DEFINE_bool("merge_lora", False, "Fold a LoRA run's adapters into the base kernels (a plain export).")
    flags.mark_flags_as_required(["workdir", "out"])
    from stiv_jax.launch import cli
    cli.run(main)
