"""Reading what ``stiv_jax.export`` writes, without orbax: full exports and LoRA adapter exports.

A full export is ``model.safetensors`` (or shards with ``model.safetensors.index.json``) + ``config.json``;
``load_exported(dir) -> (config, params)``. An adapter export is ``adapter.safetensors`` (the ``lora_a`` /
``lora_b`` leaves) + ``config.json``, whose metadata carries the base's ``fingerprint``;
``apply_adapter(dir, base_params)`` refuses any other base. Parameter trees are exchanged as ``{'a/b/c': leaf}``
(``flatten`` / ``unflatten``). The sampler reads both through this module; the writers live in
``stiv_jax.export`` and ``stiv_jax.adapters``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from safetensors import safe_open
from safetensors.flax import load_file as load_jax_arrays
from safetensors.numpy import load_file

from stiv_jax.checkpointing import integrity

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
ADAPTER = "adapter.safetensors"
FORMAT = "stiv_jax_lora"


class AdapterMismatchError(ValueError):
    """The adapter was trained on another base than the one it is applied to."""


def is_adapter(name: str) -> bool:
    return name.endswith(("/lora_a", "/lora_b"))


def fingerprint(flat: dict) -> str:
    """SHA-256 hex of the non-adapter parameters' names, shapes and float32 values (``{path: array}``)."""
    digest = hashlib.sha256()
    for name in sorted(k for k in flat if not is_adapter(k)):
        value = np.ascontiguousarray(np.asarray(flat[name], np.float32))
        digest.update(f"{name}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{'a/b/c': leaf}``."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{'a/b/c': leaf}`` -> nested dict."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def is_export(directory: str) -> bool:
    """True for a directory written by ``export`` (the sampler's hook: load it with ``load_exported``)."""
    return any(os.path.exists(os.path.join(directory, name)) for name in (SINGLE, INDEX))


def load_exported(directory: str) -> tuple[ml_collections.ConfigDict, dict]:
    """``(config, params)`` of an export: the run's config and the nested parameter dict (``{'dit', 'text'}``).

    Every weights file is checked against the step and SHA-256 that ``config.json`` records (a stale or damaged
    file is an error naming it)."""
    with open(os.path.join(directory, "config.json")) as f:
        described = json.load(f)
    config, step = ml_collections.ConfigDict(described["config"]), described.get("export", {}).get("step")
    hashes = described.get("export", {}).get("sha256", {})
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
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: the export in {directory} is incomplete; export it again")
        with safe_open(path, framework="numpy") as f:
            saved_step = (f.metadata() or {}).get("step")
        if None not in (saved_step, step) and saved_step != str(step):
            raise ValueError(f"{path} holds step {saved_step} but {directory}/config.json describes step {step}: a "
                             "stale file from another export; export it again")
        if name in hashes and integrity.file_sha256(path) != hashes[name]:
            raise ValueError(f"{path} is damaged: its SHA-256 differs from the one in {directory}/config.json; "
                             "export it again")
        flat.update(load_jax_arrays(path))
    params = unflatten(flat)
    params.setdefault("text", {})
    return config, params


def is_adapter_export(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, ADAPTER))


def apply_adapter(directory: str, base_params: dict) -> tuple[ml_collections.ConfigDict, dict]:
    """``(config, params)``: the adapter run's config and ``base_params`` (``{'dit', 'text'}``) plus the adapters.

    Raises ``AdapterMismatchError`` when ``base_params`` are not the weights the adapter was trained on.
    """
    path = os.path.join(directory, ADAPTER)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory} holds no {ADAPTER}: not an adapter export (stiv_jax.export --adapter)")
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT or "base_fingerprint" not in meta:
        raise ValueError(f"{path} is not a stiv_jax LoRA adapter (metadata {sorted(meta)})")
    base_flat = {k: np.asarray(v) for k, v in flatten(jax.device_get(base_params)).items()}
    got = fingerprint(base_flat)
    if got != meta["base_fingerprint"]:
        raise AdapterMismatchError(
            f"adapter {directory} was trained on a base with fingerprint {meta['base_fingerprint'][:16]}..., but the "
            f"given base weights have {got[:16]}... ({len(base_flat)} tensors): use the base run (its EMA weights, "
            f"fp32) the fine-tune started from")
    with open(os.path.join(directory, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f)["config"])
    params = unflatten({**base_flat, **load_file(path)})
    params.setdefault("text", {})
    return config, params
