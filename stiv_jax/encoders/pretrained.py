"""The frozen pretrained encoders a stage config names: the check that their files are there, and abstract
(shape-only) stand-ins of them for the fit check.

`require_checkpoints(config)` raises ONE error listing every missing path key (`config.latent.path`,
`config.text.path`, `config.text.tokenizer.path`) with the directory layout each expects, before a run builds
anything. `abstract_vae_space` / `abstract_text_encoder` build the encoders with `jax.ShapeDtypeStruct` params:
from the checkpoint's `config.json` when it is there (no weights read), else from the architecture preset the
config names (`config.latent.preset` + `config.latent.channels`, `config.text.preset`), so
`python -m stiv_jax.compile` compiles the real encoders' shapes on a host without the weight files.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from stiv_jax.encoders import checkpoint_dir, clip_text, vae

# Architectures for compiles without the files (the paper's VAE is internal: SD-VAE's layout with
# config.latent.channels latent channels, 8 in the paper, is INFERRED from DiT-Air's progressive 4 -> 8 channel VAE).
LATENT_PRESETS = {"sd_vae": vae.SD_VAE, "flux_vae": vae.FLUX_VAE}
TEXT_PRESETS = {"clip_bigg": clip_text.CLIP_BIGG}   # the paper's CLIP-bigG text tower (1280 wide, 32 layers)
PRETRAINED_TEXT_KINDS = ("clip", "t5", "bert")

LAYOUT = {
    "config.latent.path": "a diffusers AutoencoderKL directory: config.json + diffusion_pytorch_model.safetensors "
                          "(or a hub cache .../models--ORG--NAME/vae)",
    "config.text.path": "a transformers text-encoder directory: config.json + model.safetensors (or sharded "
                        "model-*.safetensors + model.safetensors.index.json; CLIPTextModel[WithProjection] or "
                        "CLIPModel for text.kind=clip)",
    "config.text.tokenizer.path": "a T5 tokenizer directory holding spiece.model (text.tokenizer.kind=sentencepiece)",
}
STAND_INS = ("pass the stage config argument stand_ins (e.g. experiments/t2v_256.py:size=XL,stand_ins) or "
             "--config.latent.kind=pixels --config.text.kind=token_embedding --config.text.tokenizer.kind=bytes to "
             "train on the stand-ins "
             "(space-to-depth pixels, a trainable byte text encoder) instead; runlocal uses them too")


def _has(path: str, *names: str) -> bool:
    try:
        path = checkpoint_dir.resolve_path(path)
    except (FileNotFoundError, ValueError):
        return False
    if os.path.isfile(path):
        return True
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, n)) for n in names)


# ``.get`` on config sections below: sampling and export pass a checkpoint's saved config.json, written before a
# key existed or by an experiment that did not set it (before experiments/base.py held every key).


def missing_latent(latent_config) -> list[str]:
    """``['config.latent.path=...']`` when ``latent.kind='vae'`` and its directory has no ``config.json``."""
    if latent_config.kind == "vae" and not _has(latent_config.get("path", "") or "", "config.json"):
        return [f"config.latent.path={latent_config.get('path', '')!r}"]
    return []


def missing_text(text_config) -> list[str]:
    """The text path keys (encoder, T5 tokenizer) of a pretrained ``text.kind`` whose files are absent."""
    if text_config.kind not in PRETRAINED_TEXT_KINDS:
        return []
    missing = []
    path = text_config.get("path", "") or ""
    if not _has(path, "config.json"):
        missing.append(f"config.text.path={path!r}")
    tokenizer = text_config.get("tokenizer", None) or {}
    if tokenizer.get("kind", "") == "sentencepiece" and not _has(tokenizer.get("path", "") or path, "spiece.model"):
        missing.append(f"config.text.tokenizer.path={tokenizer.get('path', '')!r}"
                       + ("" if tokenizer.get("path", "") else f" (looked in config.text.path {path!r})"))
    return missing


def missing_checkpoints(config) -> list[str]:
    """The path keys of ``config`` (``latent``, ``text`` sections) whose files are absent, each with its value."""
    return missing_latent(config.latent) + missing_text(config.text)


def require_checkpoints(config) -> None:
    """Raises one ``FileNotFoundError`` naming every missing pretrained-checkpoint key and its expected layout."""
    missing = missing_checkpoints(config)
    if not missing:
        return
    keys = [m.split("=")[0] for m in missing]
    layout = "; ".join(f"{k}: {LAYOUT[k]}" for k in dict.fromkeys(keys))
    raise FileNotFoundError(
        f"config {config.get('stage', '')!r} trains on frozen pretrained encoders (latent.kind="
        f"{config.latent.kind!r}, text.kind={config.text.kind!r}) but their files are not there: "
        f"{', '.join(missing)}. Set {' and '.join(dict.fromkeys(keys))} to local directories ({layout}); "
        f"docs/pretrained_checkpoints.md shows the download and the hub-cache layout. Or {STAND_INS}.")


def _local_config(path: str, *, loader: str, accepted: tuple[str, ...], setting: str) -> dict | None:
    """The checkpoint's parsed ``config.json`` when ``path`` has one, else None (nothing else is read)."""
    if not path or not _has(path, "config.json"):
        return None
    directory, _ = checkpoint_dir.resolve(path)
    return checkpoint_dir.read_config(directory, loader=loader, accepted=accepted, config_setting=setting)


def _architecture(section, *, name: str, presets: dict, loader: str, accepted: tuple[str, ...], from_dict):
    """``(architecture config, from a preset?)`` of ``config.{name}``: its checkpoint's ``config.json`` if there,
    else ``presets[config.{name}.preset]``."""
    path = section.get("path", "") or ""
    raw = _local_config(path, loader=loader, accepted=accepted, setting=f"config.{name}.path")
    if raw is not None:
        return from_dict(raw, source=f"{path}/config.json"), False
    preset = section.get("preset", "")
    if preset not in presets:
        raise ValueError(f"config.{name}.preset={preset!r} is not known; valid: {sorted(presets)} (the architecture "
                         f"the fit check compiles while config.{name}.path has no config.json)")
    return presets[preset], True


def abstract_vae_space(latent_config):
    """A ``VAESpace`` whose params are ``ShapeDtypeStruct``s: ``config.json`` at ``latent.path`` if present, else
    ``LATENT_PRESETS[latent.preset]`` with ``latent.channels`` latent channels."""
    from stiv_jax.encoders.vae_space import VAESpace
    config, preset = _architecture(latent_config, name="latent", presets=LATENT_PRESETS, loader="AutoencoderKL",
                                   accepted=("AutoencoderKL",), from_dict=vae.AutoencoderKLConfig.from_dict)
    channels = int(latent_config.get("channels", 0) or config.latent_channels)
    if preset and channels != config.latent_channels:
        config = dataclasses.replace(config, latent_channels=channels, latents_mean=None, latents_std=None)
    model = vae.AutoencoderKL(config)
    size = 2 * config.downsample_factor
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, config.in_channels)))["params"]
    return VAESpace(model=model, params=params, frame_chunk=int(latent_config.get("frame_chunk", 16)))


def abstract_clip_module(text_config) -> clip_text.CLIPTextTransformer:
    """The CLIP text tower of ``text.path``'s ``config.json`` if present, else of ``TEXT_PRESETS[text.preset]``."""
    config, _ = _architecture(text_config, name="text", presets=TEXT_PRESETS, loader="clip",
                              accepted=("clip", "clip_text_model"), from_dict=clip_text.CLIPTextConfig.from_dict)
    return clip_text.CLIPTextTransformer(config, hidden_layer=text_config.get("hidden_layer", None))


def abstract_params(module, length: int):
    """``ShapeDtypeStruct`` params of a text ``module`` (``init`` on ``[1, length]`` ids, traced only)."""
    ids = jnp.zeros((1, length), jnp.int32)
    return jax.eval_shape(module.init, jax.random.key(0), ids, jnp.ones((1, length), bool))["params"]


class ShapeOnlyTokenizer:
    """The fit check's tokenizer when the real one's files are absent: ``(ids [batch, max_length] int32 zeros,
    mask [batch, max_length] bool, True at position 0)``. Only the shapes reach the compiled step (the CFG null
    prompt is the one caption it tokenizes); never used to train."""

    vocab_size = 1

    def __call__(self, texts, max_length):
        ids = np.zeros((len(texts), max_length), np.int32)
        mask = np.zeros((len(texts), max_length), bool)
        mask[:, 0] = True
        return ids, mask
