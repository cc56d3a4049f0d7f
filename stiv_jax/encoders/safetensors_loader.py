"""Load PyTorch-layout safetensors checkpoints (Hugging Face / diffusers) into our nested Linen params.

Our modules name their submodules after the reference implementation's attribute path, with a list index merged
into the preceding name (`encoder.layers.3.self_attn.q_proj.weight` -> `encoder/layers_3/self_attn/q_proj/kernel`).
A reference leaf `weight` becomes whichever of `kernel` (transposed: Linear `[out, in]` -> `[in, out]`, Conv
`[out, in, kh, kw]` -> `[kh, kw, in, out]`), `embedding` or `scale` the module declares; `bias` stays `bias`.

`load_params` REFUSES a file that does not match the model: it raises `CheckpointMismatchError` naming every
missing, unexpected and shape-mismatched tensor, so a wrong config (width, depth, vocab) is caught at load time.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open

Path = tuple[str, ...]


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model built from the config."""


def safetensors_files(path: str, *, default_name: str) -> list[str]:
    """Resolves `path` (a `.safetensors` file, or a directory holding `default_name` or its sharded index)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}: give a .safetensors file or a directory holding one.")
    single = os.path.join(path, default_name)
    if os.path.isfile(single):
        return [single]
    index = single + ".index.json"
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    found = sorted(name for name in os.listdir(path) if name.endswith(".safetensors"))
    if len(found) == 1:
        return [os.path.join(path, found[0])]
    raise FileNotFoundError(
        f"Directory {path!r} holds neither {default_name!r} nor {default_name}.index.json (found {found}).")


def read_state_dict(files: Iterable[str]) -> dict[str, np.ndarray]:
    """Reads every tensor of the given safetensors files into host numpy arrays (bf16 stays ml_dtypes bf16)."""
    state: dict[str, np.ndarray] = {}
    for file in files:
        with safe_open(file, framework="flax") as f:
            for key in f.keys():
                state[key] = np.asarray(f.get_tensor(key))
    return state


def reference_to_path(key: str) -> tuple[Path, str]:
    """`a.blocks.0.b.weight` -> (('a', 'blocks_0', 'b'), 'weight')."""
    parts = key.split(".")
    module: list[str] = []
    for part in parts[:-1]:
        if part.isdigit() and module:
            module[-1] = f"{module[-1]}_{part}"
        else:
            module.append(part)
    return tuple(module), parts[-1]


def path_to_reference(path: Path) -> str:
    """Inverse of `reference_to_path` for error messages: ('a', 'blocks_0', 'kernel') -> 'a.blocks.0.weight'."""
    parts = [re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
    leaf = "bias" if path[-1] == "bias" else "weight"
    return ".".join(parts + [leaf])


def _convert_leaf(leaf: str, expected_leaves: set[str], value: np.ndarray) -> tuple[str, np.ndarray] | None:
    if leaf == "bias":
        return "bias", value
    if leaf != "weight":
        return None
    if "kernel" in expected_leaves:
        if value.ndim == 2:  # Linear [out, in] -> [in, out]
            return "kernel", value.T
        if value.ndim == 4:  # Conv [out, in, kh, kw] -> [kh, kw, in, out]
            return "kernel", value.transpose(2, 3, 1, 0)
        return "kernel", value
    for name in ("embedding", "scale"):
        if name in expected_leaves:
            return name, value
    return None


def expected_shapes(abstract_params: Any) -> dict[Path, tuple[int, ...]]:
    """Flat `{path: shape}` of an (abstract, possibly boxed) params tree from `jax.eval_shape(model.init, ...)`."""
    flat = traverse_util.flatten_dict(nn.meta.unbox(abstract_params))
    return {path: tuple(value.shape) for path, value in flat.items()}


def load_params(
    path: str,
    abstract_params: Any,
    *,
    default_name: str = "model.safetensors",
    key_prefix: str = "",
    aliases: Mapping[str, str] | None = None,
    ignore_unexpected: Iterable[str] = (),
    dtype=np.float32,
) -> dict:
    """Loads a PyTorch-layout safetensors checkpoint into a nested params dict shaped like `abstract_params`.

    Args:
      path: a `.safetensors` file or a directory holding `default_name` (or its sharded `.index.json`).
      abstract_params: the params tree the model expects (`jax.eval_shape(model.init, ...)["params"]`).
      key_prefix: stripped from every reference key (e.g. `"text_model."` for CLIP checkpoints saved with it).
      aliases: reference key -> canonical reference key for tied / renamed tensors (used when the canonical key is
        absent from the file).
      ignore_unexpected: regexes of reference keys the model deliberately does not use (e.g. BERT's pooler).
      dtype: the dtype the params are cast to.
    Returns:
      Nested dict of numpy arrays (plain, unboxed), same structure as `abstract_params`.
    Raises:
      CheckpointMismatchError: naming every missing, unexpected and shape-mismatched tensor.
    """
    state = read_state_dict(safetensors_files(path, default_name=default_name))
    return convert_state_dict(state, abstract_params, source=path, key_prefix=key_prefix, aliases=aliases,
                              ignore_unexpected=ignore_unexpected, dtype=dtype)


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    abstract_params: Any,
    *,
    source: str = "state dict",
    key_prefix: str = "",
    aliases: Mapping[str, str] | None = None,
    ignore_unexpected: Iterable[str] = (),
    dtype=np.float32,
) -> dict:
    """`load_params` on an in-memory flat reference state dict (`source` names it in errors).

    Arrays may be zero-stride views (e.g. `np.broadcast_to`): with `dtype=None` they are checked and mapped
    without being copied, which checks the layout of a huge model without its memory.
    """
    state = dict(state)
    if key_prefix:
        state = {k[len(key_prefix):] if k.startswith(key_prefix) else k: v for k, v in state.items()}
    for alias, canonical in (aliases or {}).items():
        if alias in state:
            value = state.pop(alias)
            state.setdefault(canonical, value)
    ignore = [re.compile(p) for p in ignore_unexpected]

    shapes = expected_shapes(abstract_params)
    leaves_by_module: dict[Path, set[str]] = {}
    for p in shapes:
        leaves_by_module.setdefault(p[:-1], set()).add(p[-1])

    loaded: dict[Path, np.ndarray] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in sorted(state.items()):
        module, leaf = reference_to_path(key)
        converted = _convert_leaf(leaf, leaves_by_module.get(module, set()), value)
        target = module + (converted[0],) if converted else None
        if target is None or target not in shapes:
            if not any(p.search(key) for p in ignore):
                unexpected.append(f"{key} {tuple(value.shape)}")
            continue
        array = converted[1]
        if array.ndim == 4 and array.shape[:2] == (1, 1) and tuple(array.shape[2:]) == shapes[target]:
            array = array[0, 0]  # a 1x1 conv stored where we use a Linear (old diffusers attention)
        if tuple(array.shape) != shapes[target]:
            mismatched.append(f"{key}: file {tuple(value.shape)} vs model {shapes[target]} ({'/'.join(target)})")
            continue
        loaded[target] = array if dtype is None else np.ascontiguousarray(array).astype(dtype)
    missing = [f"{path_to_reference(p)} ({'/'.join(p)}) {shapes[p]}" for p in sorted(shapes) if p not in loaded
               and not any(m.endswith(f"({'/'.join(p)})") for m in mismatched)]
    if missing or unexpected or mismatched:
        lines = [f"Checkpoint {source!r} does not match the model built from the config "
                 f"(check the config's architecture fields or the file)."]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:20]) +
                             (f"; ... {len(items) - 20} more" if len(items) > 20 else ""))
        raise CheckpointMismatchError("\n".join(lines))
    return traverse_util.unflatten_dict(loaded)


def to_device(params: Any) -> Any:
    """Puts a numpy params tree on the default device as jax arrays."""
    return jax.tree.map(jax.numpy.asarray, params)
