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
from safetensors import SafetensorError, safe_open

from stiv_jax.encoders import checkpoint_dir

Path = tuple[str, ...]


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model built from the config."""


def _variant_candidates(directory: str, default_name: str) -> tuple[list[str], list[str]]:
    """(index files, single files) in `directory` that are `default_name` or one of its variants (`.fp16`)."""
    stem = default_name[:-len(".safetensors")]
    names = sorted(os.listdir(directory))
    indexes = [n for n in names if n.startswith(stem) and ".index" in n and n.endswith(".json")]
    shard = re.compile(r"-\d{5}-of-\d{5}\.safetensors$")
    singles = [n for n in names if n.endswith(".safetensors") and not shard.search(n)]
    return indexes, singles


def _index_files(index: str) -> list[str]:
    """The shard files a `*.safetensors.index.json` names (each must exist)."""
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index} is not a safetensors index (a JSON object with a 'weight_map'): {e!r}") from e
    directory = os.path.dirname(index)
    files = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
    absent = [os.path.basename(f) for f in files if not os.path.isfile(f)]
    if absent:
        raise FileNotFoundError(f"{index} names shards that are not in {directory!r}: {absent} "
                                "(an interrupted download? fetch them again).")
    return files


def safetensors_files(path: str, *, default_name: str) -> list[str]:
    """Resolves `path` (a `.safetensors` file, or a directory holding the weights) to the files to read.

    In a directory: `default_name`, else its sharded index (`default_name.index.json`), else the only variant index
    (`model.safetensors.index.fp16.json`) or the only single `.safetensors` file (`model.fp16.safetensors`).
    """
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}: give a .safetensors file or a directory holding one.")
    for name in os.listdir(path):
        if name.endswith((".safetensors", ".json")):
            checkpoint_dir.require_not_dangling(os.path.join(path, name))
    single = os.path.join(path, default_name)
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(single + ".index.json"):
        return _index_files(single + ".index.json")
    indexes, singles = _variant_candidates(path, default_name)
    if len(indexes) == 1 and not singles:
        return _index_files(os.path.join(path, indexes[0]))
    if len(singles) == 1 and not indexes:
        return [os.path.join(path, singles[0])]
    bins = sorted(n for n in os.listdir(path) if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    hint = (f" It holds PyTorch pickles {bins}, which are not read: download the safetensors files or re-save "
            "with save_pretrained(safe_serialization=True).") if bins and not singles and not indexes else \
        " Give the .safetensors file (or its index) to use as the path." if singles or indexes else \
        " It holds no .safetensors weights."
    raise FileNotFoundError(f"Directory {path!r} holds neither {default_name!r} nor {default_name}.index.json "
                            f"(indexes {indexes}, files {singles}).{hint}")


def read_state_dict(files: Iterable[str]) -> dict[str, np.ndarray]:
    """Reads every tensor of the given safetensors files into host numpy arrays (bf16 stays ml_dtypes bf16).

    A file that cannot be read (truncated, not safetensors) raises naming it; so does a tensor held by two shards.
    """
    state: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(file, framework="flax") as f:
                for key in f.keys():
                    if key in state:
                        raise ValueError(f"Tensor {key!r} is in both {origin[key]} and {file}.")
                    state[key], origin[key] = np.asarray(f.get_tensor(key)), file
        except SafetensorError as e:
            size = os.path.getsize(file)
            raise ValueError(f"Cannot read {file} ({size} bytes) as safetensors: {e}. The file is truncated or "
                             "not a safetensors file; download it again.") from e
    return state


def checkpoint_keys(files: Iterable[str]) -> set[str]:
    """The tensor names of the given safetensors files (header only; no tensor is read)."""
    keys: set[str] = set()
    for file in files:
        try:
            with safe_open(file, framework="numpy") as f:
                keys.update(f.keys())
        except SafetensorError as e:
            raise ValueError(f"Cannot read {file} as safetensors: {e}. The file is truncated or not a "
                             "safetensors file; download it again.") from e
    return keys


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


def path_to_reference(path: Path, literal_names: Iterable[str] = ()) -> str:
    """Inverse of `reference_to_path` for error messages: ('a', 'blocks_0', 'kernel') -> 'a.blocks.0.weight'.

    `literal_names` are module names that end in `_N` in the reference too (T5's `wi_0`), kept as they are.
    """
    literal = set(literal_names)
    parts = [p if p in literal else re.sub(r"_(\d+)$", r".\1", p) for p in path[:-1]]
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
    literal_names: Iterable[str] = (),
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
      literal_names: module names ending in `_N` in the reference as well (see `path_to_reference`).
      dtype: the dtype the params are cast to.
    Returns:
      Nested dict of numpy arrays (plain, unboxed), same structure as `abstract_params`.
    Raises:
      CheckpointMismatchError: naming every missing, unexpected and shape-mismatched tensor.
    """
    state = read_state_dict(safetensors_files(path, default_name=default_name))
    return convert_state_dict(state, abstract_params, source=path, key_prefix=key_prefix, aliases=aliases,
                              ignore_unexpected=ignore_unexpected, literal_names=literal_names, dtype=dtype)


def _strip_prefix(state: Mapping[str, np.ndarray], key_prefix: str, aliases: Mapping[str, str] | None
                  ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(state keyed by canonical names, canonical name -> the key as the file spells it)."""
    stripped: dict[str, np.ndarray] = {}
    spelling: dict[str, str] = {}
    for key, value in state.items():
        name = key[len(key_prefix):] if key_prefix and key.startswith(key_prefix) else key
        stripped[name], spelling[name] = value, key
    for alias, canonical in (aliases or {}).items():
        if alias in stripped and canonical not in stripped:
            stripped[canonical], spelling[canonical] = stripped.pop(alias), spelling.pop(alias)
        elif alias in stripped:
            stripped.pop(alias)  # a tied copy of a tensor the file holds under its canonical name
    return stripped, spelling


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    abstract_params: Any,
    *,
    source: str = "state dict",
    key_prefix: str = "",
    aliases: Mapping[str, str] | None = None,
    ignore_unexpected: Iterable[str] = (),
    literal_names: Iterable[str] = (),
    unprefixed_modules: Iterable[str] = (),
    dtype=np.float32,
) -> dict:
    """`load_params` on an in-memory flat reference state dict (`source` names it in errors).

    Errors spell every key as the file does; missing keys as the reference writes them, with `key_prefix` when the
    file uses it, except for the top-level `unprefixed_modules` (CLIP's `text_projection` sits beside `text_model.`).
    Arrays may be zero-stride views (e.g. `np.broadcast_to`): with `dtype=None` they are checked and mapped
    without being copied, which checks the layout of a huge model without its memory.
    """
    prefixed = bool(key_prefix) and any(k.startswith(key_prefix) for k in state)
    state, spelling = _strip_prefix(state, key_prefix, aliases)
    ignore = [re.compile(p) for p in ignore_unexpected]
    shapes = expected_shapes(abstract_params)
    leaves_by_module: dict[Path, set[str]] = {}
    for p in shapes:
        leaves_by_module.setdefault(p[:-1], set()).add(p[-1])

    loaded: dict[Path, np.ndarray] = {}
    unexpected: list[str] = []
    mismatched: dict[Path, str] = {}
    for key, value in sorted(state.items()):
        module, leaf = reference_to_path(key)
        converted = _convert_leaf(leaf, leaves_by_module.get(module, set()), value)
        target = module + (converted[0],) if converted else None
        if target is None or target not in shapes:
            if not any(p.search(key) for p in ignore):
                unexpected.append(f"{spelling[key]} {tuple(value.shape)}")
            continue
        array = converted[1]
        if array.ndim == 4 and array.shape[:2] == (1, 1) and tuple(array.shape[2:]) == shapes[target]:
            array = array[0, 0]  # a 1x1 conv stored where we use a Linear (old diffusers attention)
        if tuple(array.shape) != shapes[target]:
            mismatched[target] = (f"{spelling[key]}: file {tuple(value.shape)} vs model {shapes[target]} "
                                  f"({'/'.join(target)})")
            continue
        loaded[target] = array if dtype is None else np.ascontiguousarray(array).astype(dtype)
    missing = []
    for p in sorted(shapes):
        if p not in loaded and p not in mismatched:
            name = path_to_reference(p, literal_names)
            name = key_prefix + name if prefixed and p[0] not in unprefixed_modules else name
            missing.append(f"{name} ({'/'.join(p)}) {shapes[p]}")
    if missing or unexpected or mismatched:
        lines = [f"Checkpoint {source!r} does not match the model built from the config "
                 f"(check the config's architecture fields or the file)."]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("shape mismatch", list(mismatched.values()))):
            if items:
                lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:20]) +
                             (f"; ... {len(items) - 20} more" if len(items) > 20 else ""))
        raise CheckpointMismatchError("\n".join(lines))
    return traverse_util.unflatten_dict(loaded)


def to_device(params: Any) -> Any:
    """Puts a numpy params tree on the default device as jax arrays."""
    return jax.tree.map(jax.numpy.asarray, params)
