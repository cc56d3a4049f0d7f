"""Sampling from a run directory: restore parameters, build the generator, write videos (the CLI's work).

``stiv_jax.sample`` parses flags and calls ``write_video`` or ``write_prompt_file``; evaluation code and tests
call these directly.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from stiv_jax.checkpointing import exports
from stiv_jax.checkpointing import manager as ckpt
from stiv_jax.data import video_io
from stiv_jax.diffusion.guidance import Guidance
from stiv_jax.sampling import prompts as prompts_lib
from stiv_jax.sampling.cascade import upsample_video
from stiv_jax.sampling.generate import Generator, SolverSettings, default_micro_conditions
from stiv_jax.sampling.long_video import generate_long
from stiv_jax.model.bundle import build_model_bundle


def load_params(workdir: str, *, use_ema: bool = True, adapter: str | None = None):
    """``(config, bundle, params)`` of the newest intact checkpoint in ``workdir`` (or of an export), on one
    device. Only the parameters are read (EMA or raw), never the optimizer state.

    ``adapter``: a LoRA adapter export (``stiv_jax.export --adapter``) applied on top of these base weights; it is
    refused (``AdapterMismatchError``) unless they are the base it was trained on.
    """
    if adapter:
        _, _, base = load_params(workdir, use_ema=use_ema)
        config, params = exports.apply_adapter(adapter, base)
        return config, build_model_bundle(config), params
    if exports.is_export(workdir):   # an exported directory (safetensors + config.json) needs no orbax
        config, params = exports.load_exported(workdir)
        return config, build_model_bundle(config), params
    config = ml_collections.ConfigDict(ckpt.restore_config(workdir))
    # The newest step that verifies (a damaged one is skipped with a line, and left where it is).
    params = ckpt.load_newest_intact_params(workdir, use_ema=use_ema)
    return config, build_model_bundle(config), jax.device_put(params, jax.devices()[0])


def sample_task(gen: Generator, config, task: str, prompt_batch: list[str], *, seed: int | list[int],
                clip: np.ndarray | None, frame_mask: np.ndarray, progress: bool = True) -> np.ndarray:
    """uint8 ``[batch, frames, height, width, 3]`` videos of ``task`` for ``prompt_batch``."""
    clean = None if clip is None else gen.encode(clip[None])
    if task == "multiview":
        prompt_batch = [""] * len(prompt_batch)   # the multi-view model is trained with empty text
    if task == "long":
        seeds = [seed] * len(prompt_batch) if isinstance(seed, int) else seed
        return np.concatenate([gen.to_uint8(generate_long(gen, config, p, seed=s, image_latents=clean,
                                                          progress=progress)) for p, s in zip(prompt_batch, seeds)])
    micro = default_micro_conditions(config, len(prompt_batch))
    latents = gen.latents(prompt_batch, micro=micro, seed=seed, clean=clean, frame_mask=frame_mask,
                          progress=progress)
    return gen.to_uint8(latents)


@dataclasses.dataclass(frozen=True)
class Upsampler:
    """A temporal-upsampler run (``experiments/temporal_upsampler.py``) cascaded after the main model."""

    gen: Generator
    config: ml_collections.ConfigDict

    @classmethod
    def load(cls, workdir: str, *, use_ema: bool = True) -> "Upsampler":
        """The TUP run (or export) of ``workdir`` with its own ``config.sample`` solver and guidance."""
        config, bundle, params = load_params(workdir, use_ema=use_ema)
        if not config.diffusion.tasks.get("upsample", 0):
            raise ValueError(f"--upsampler={workdir!r} did not train the upsample task (config.diffusion.tasks="
                             f"{dict(config.diffusion.tasks)}); give a temporal_upsampler run")
        guidance = Guidance.from_config(config.sample)
        return cls(Generator(bundle, params, guidance, SolverSettings.from_config(config.sample,
                                                                                 bundle.latent_shape)), config)

    def __call__(self, videos: np.ndarray, prompts: list[str], seeds: list[int]) -> np.ndarray:
        """uint8 ``[batch, 2 frames, r, r, 3]``: every video at twice its frame rate."""
        # The TUP's noise must not repeat the main sample's: its seeds are offset by a large prime.
        return np.stack([upsample_video(self.gen, self.config, v, p, seed=s + 104729)
                         for v, p, s in zip(videos, prompts, seeds)])


def write_video(gen: Generator, config, task: str, prompt: str, out: str, *, seed: int,
                clip: np.ndarray | None, frame_mask: np.ndarray, upsampler: Upsampler | None = None) -> np.ndarray:
    """Samples one video (then doubles its frame rate with ``upsampler``), writes ``out`` (.mp4) and the .gif
    beside it; returns uint8 ``[frames, h, w, 3]``."""
    video = sample_task(gen, config, task, [prompt], seed=seed, clip=clip, frame_mask=frame_mask)[0]
    fps = config.sample.fps
    if upsampler is not None:
        video, fps = upsampler(video[None], [prompt], [seed])[0], 2 * fps
    video_io.encode_mp4(video, fps=fps, path=out)
    video_io.write_gif(video, os.path.splitext(out)[0] + ".gif", fps=fps)
    return video


def write_prompt_file(gen: Generator, config, task: str, prompt_file: str, out_dir: str, *, seed: int,
                      clip: np.ndarray | None, frame_mask: np.ndarray, videos_per_prompt: int = 1,
                      batch_size: int = 1, dimension: str | None = None, upsampler: Upsampler | None = None
                      ) -> list[str]:
    """One mp4 per (prompt, index) in VBench's naming ``{prompt}-{index}.mp4`` under ``out_dir`` (at twice the
    frame rate through ``upsampler`` when given).

    Videos already there are kept (a stopped run continues); video ``index`` uses seed ``seed + index``.
    Returns the paths written now.
    """
    entries = prompts_lib.read_prompt_file(prompt_file, dimension=dimension)
    jobs = [(e.prompt, i) for e in entries for i in range(videos_per_prompt)]
    path = lambda p, i: os.path.join(out_dir, prompts_lib.vbench_filename(p, i))  # noqa: E731
    todo = [(p, i) for p, i in jobs if not os.path.exists(path(p, i))]
    os.makedirs(out_dir, exist_ok=True)
    print(f"{len(entries)} prompts, {len(jobs)} videos, {len(jobs) - len(todo)} already in {out_dir}")
    bs = max(1, batch_size)
    written = []
    for start in tqdm(range(0, len(todo), bs), desc="prompts", unit="batch"):
        chunk = todo[start:start + bs]
        padded = chunk + [chunk[-1]] * (bs - len(chunk))   # one batch shape: one compilation
        # One seed per video (seed + index): a video does not depend on which prompts share its batch.
        videos = sample_task(gen, config, task, [p for p, _ in padded], seed=[seed + i for _, i in padded],
                             clip=clip, frame_mask=frame_mask, progress=False)
        fps = config.sample.fps
        if upsampler is not None:
            videos, fps = upsampler(videos[:len(chunk)], [p for p, _ in chunk], [seed + i for _, i in chunk]), 2 * fps
        for (prompt, index), video in zip(chunk, videos):
            # Write then rename: a run killed mid-write leaves no partial file that a re-run would take as done.
            partial = os.path.join(out_dir, ".partial", os.path.basename(path(prompt, index)))
            os.makedirs(os.path.dirname(partial), exist_ok=True)
            video_io.encode_mp4(video, fps=fps, path=partial)
            os.replace(partial, path(prompt, index))
            written.append(path(prompt, index))
    if os.path.isdir(os.path.join(out_dir, ".partial")):
        os.rmdir(os.path.join(out_dir, ".partial"))   # empty once every video is renamed
    return written
