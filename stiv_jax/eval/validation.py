"""In-training validation: sample fixed prompts (T2V) and held-out first frames (TI2V), write a video grid to
TensorBoard and the workdir, and compute FVD against held-out real clips when configured.

Runs every ``config.sample_every`` optimizer steps (0: never); the other settings live in
``config.eval.validation`` (see :func:`default_validation_config`). The trainer checks the settings at start-up
(:func:`check_settings`), builds the run's validator at the first due step (``for_run(config, workdir, bundle,
mesh=..., rules=..., writer=...)``, which loads the held-out clips), calls ``validator.run(step, state.ema_params)``
when a step is due (after that step's checkpoint) and closes it with the run; ``params`` may be sharded over
``mesh``. Samples come from one :class:`~stiv_jax.eval.generation.EvalSampler` per validator, so validations after
the first compile nothing.

Outputs of step ``s``: ``workdir/validation/step_{s:08d}_{t2v,ti2v}.mp4`` and ``.gif`` (a grid, one cell per
sample), ``_frames.png`` (a row of frames per sample), the GIF as an animated image summary
``validation/{t2v,ti2v}`` in ``workdir/tensorboard``, and
``validation/fvd`` in ``workdir/metrics.jsonl`` + TensorBoard when ``fvd_clips`` > 0. The learning benchmark's
scores (``stiv_jax.eval.learning``) go the same way: ``validation/adherence``, ``validation/direction``,
``validation/speed``, ``validation/colour`` and ``validation/tint`` of ``learning_prompts`` held-out digit prompts,
and with ``score_ti2v`` the TI2V cells' ``validation/ti2v_psnr`` / ``ti2v_ssim`` against their true clips, beside
``validation/static_psnr`` / ``static_ssim`` (frame 0 repeated) and ``validation/t2v_psnr`` / ``t2v_ssim`` (the same
captions without the image).
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import ml_collections
import numpy as np

from stiv_jax.data import video_io

# (params, prompts, *, seeds, first_frames=None) -> uint8 [batch, frames, height, width, 3]: sample i from noise
# seed seeds[i]; first_frames: uint8 [batch, height, width, 3] images given as frame 0 (TI2V), or None (T2V).
SampleFn = Callable[..., np.ndarray]


def default_validation_config() -> ml_collections.ConfigDict:
    """``config.eval.validation`` defaults; a run's config overrides any of them.

    The values of experiments/base.py's ``eval.validation`` (tests/experiments/test_base_config.py checks),
    kept for configs that lack the section: a checkpoint's saved config.json written before it existed.
    """
    config = ml_collections.ConfigDict()
    config.prompts = (              # fixed T2V prompts, one grid cell each
        "a cyclist rides past a white delivery van in the city",
        "a big white rabbit stands in a sunny meadow",
        "a man talks on a phone in a car",
        "a butterfly flies over the grass",
    )
    config.heldout = ""             # held-out real clips (shards dir/glob or video dir): TI2V images, FVD reference
    config.ti2v_samples = 2         # TI2V cells: first frames of the first N held-out clips, with their captions
    config.fvd_clips = 0            # FVD of N T2V samples vs N held-out clips (0: off; needs data.frames >= 9)
    config.fvd_prompts = ()         # prompts of the FVD samples, cycled (empty: the validation prompts)
    config.seed = 0                 # sample i uses noise seed seed + i, the same at every validation
    config.num_steps = None         # sampling steps (None or 0: config.sample.num_steps)
    config.cfg_scale = None         # guidance (None: config.sample.cfg_scale)
    config.grid_columns = 4         # cells per grid row
    config.learning_prompts = 0     # held-out digit prompts scored for adherence/direction/speed (0: off)
    config.score_ti2v = False       # PSNR/SSIM of the TI2V cells vs their true clips, static copy and T2V beside
    return config


def validation_config(run_config) -> ml_collections.ConfigDict:
    """The defaults updated with ``run_config.eval.validation`` when present (unknown keys are named)."""
    config = default_validation_config()
    # ``.get``: tests replace config.eval with a partial dict; a checkpoint's saved config.json may predate it.
    overrides = (run_config.get("eval", None) or {}).get("validation", None) or {}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ValueError(f"config.eval.validation has unknown keys {unknown}; valid keys: {sorted(config)}")
    config.update(dict(overrides))
    return config


def check_settings(run_config) -> ml_collections.ConfigDict:
    """Checks ``config.eval.validation`` without touching files (the train loop calls it at start-up, so a typo
    fails before training): unknown keys, FVD's frame count and reference. Returns the merged settings."""
    c = validation_config(run_config)
    frames = int(run_config.data.frames)
    if c.fvd_clips and frames < 9:
        raise ValueError(f"config.eval.validation.fvd_clips needs clips of >= 9 frames for I3D (FVD uses 16); "
                         f"config.data.frames={frames}")
    if c.fvd_clips and not c.heldout:
        raise ValueError("config.eval.validation.fvd_clips > 0 needs config.eval.validation.heldout "
                         "(a directory of held-out real clips)")
    if not c.prompts:
        raise ValueError("config.eval.validation.prompts is empty; give at least one T2V prompt")
    return c


def video_grid(videos_bthwc: np.ndarray, *, columns: int, pad: int = 2) -> np.ndarray:
    """uint8 ``[n, frames, height, width, 3]`` -> one uint8 video ``[frames, rows * (height + pad) + pad,
    columns * (width + pad) + pad, 3]``, cells in row-major order on a black background."""
    n, t, h, w, c = videos_bthwc.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.zeros((t, rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i, video in enumerate(videos_bthwc):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        grid[:, top:top + h, left:left + w] = video
    return grid


def frame_strip(videos_bthwc: np.ndarray, *, pad: int = 2, scale: int = 3) -> np.ndarray:
    """uint8 ``[n, frames, height, width, 3]`` -> one uint8 image, a row per video and a column per frame, on a
    black background, every pixel repeated ``scale`` times (small videos stay legible)."""
    n, t, h, w, c = videos_bthwc.shape
    image = np.zeros((n * (h + pad) + pad, t * (w + pad) + pad, c), np.uint8)
    for i, video in enumerate(videos_bthwc):
        for j, frame in enumerate(video):
            image[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w] = frame
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


class Validator:
    """Validation of one run: held-out clips loaded once, grids and metrics written by process 0.

    ``mesh``: the training mesh (FVD features are computed data-parallel over this process's devices of it; the
    sampler ``sample_fn`` carries its own mesh); None: all devices.
    """

    def __init__(self, run_config, workdir: str, sample_fn: SampleFn, *, metric_writer=None, mesh=None):
        self.config = validation_config(run_config)
        self.mesh = mesh
        self.fps = run_config.sample.fps
        self.workdir = workdir
        self.sample_fn = sample_fn
        self.metric_writer = metric_writer
        self.heldout = self._load_heldout(run_config)
        self._real_features = None   # I3D features of the held-out FVD clips, computed once
        self._tb = None

    def _load_heldout(self, run_config) -> list[tuple[np.ndarray, str]]:
        """``(clip uint8 [frames, h, w, 3], caption)`` of the held-out clips needed (TI2V images, FVD)."""
        c = check_settings(run_config)
        needed = max(c.ti2v_samples if c.heldout else 0, c.fvd_clips)
        if not needed:
            return []
        from stiv_jax.eval import clips as clips_lib
        frames = int(run_config.data.frames)
        windows = clips_lib.ClipWindows(num_frames=frames, frame_stride=int(run_config.data.frame_stride))
        try:
            heldout = list(clips_lib.iter_captioned_clips(c.heldout, windows, max_clips=needed))
        except FileNotFoundError as e:
            raise ValueError(f"config.eval.validation.heldout: {e}; point it at held-out clips, or set "
                             "config.sample_every=0 to turn validation off") from e
        if c.fvd_clips and len(heldout) < max(2, c.fvd_clips):
            raise ValueError(f"config.eval.validation.heldout={c.heldout!r} gave {len(heldout)} clips of {frames} "
                             f"frames; fvd_clips={c.fvd_clips} needs that many (and at least 2)")
        return heldout

    def run(self, step: int, params) -> dict:
        """Samples, writes grids, computes FVD if configured; returns ``{'validation/fvd': ...}`` (maybe empty)."""
        c = self.config
        sample = lambda prompts, **kw: np.asarray(self.sample_fn(params, prompts, **kw))  # noqa: E731
        seeds = lambda n, offset=0: [int(c.seed) + offset + i for i in range(n)]  # noqa: E731
        grids = {"t2v": sample(list(c.prompts), seeds=seeds(len(c.prompts)))}
        ti2v = self.heldout[:c.ti2v_samples] if c.heldout else []
        if ti2v:
            grids["ti2v"] = sample([caption for _, caption in ti2v], seeds=seeds(len(ti2v), 1000),
                                   first_frames=np.stack([fit_frame(clip[0], grids["t2v"].shape[2:4]) for clip, _ in ti2v]))
        metrics = {}
        if ti2v and c.score_ti2v:
            metrics.update(self._ti2v_scores(sample, ti2v, grids))
        if c.learning_prompts:
            from stiv_jax.data.procedural import heldout_prompts
            from stiv_jax.eval.learning import score_t2v, score_tint
            prompts = heldout_prompts(int(c.learning_prompts))
            videos = sample(prompts, seeds=seeds(len(prompts), 3000))
            metrics.update({f"validation/{k}": v for k, v in score_t2v(videos, prompts).items()})
            if len(prompts) > 1:
                metrics["validation/tint"] = score_tint(videos, prompts)
        if c.fvd_clips:
            prompts = list(c.fvd_prompts or c.prompts)
            fake = sample([prompts[i % len(prompts)] for i in range(c.fvd_clips)], seeds=seeds(c.fvd_clips, 2000))
            metrics["validation/fvd"] = self._fvd(list(fake))
        if jax.process_index() == 0:
            for name, videos in grids.items():
                self._write_grid(step, name, video_grid(videos, columns=c.grid_columns))
                from PIL import Image
                Image.fromarray(frame_strip(videos)).save(
                    os.path.join(self.workdir, "validation", f"step_{step:08d}_{name}_frames.png"))
            if metrics and self.metric_writer is not None:
                self.metric_writer.write(step, metrics)
        return metrics

    def _ti2v_scores(self, sample, ti2v, grids) -> dict:
        """TI2V fidelity of the cells (``stiv_jax.eval.learning.ti2v_fidelity``) against the held-out clips at the
        run's resolution, with the same captions sampled without the image (the same seeds) as the T2V row."""
        from stiv_jax.eval.learning import ti2v_fidelity
        size = grids["ti2v"].shape[2:4]
        true = np.stack([np.stack([fit_frame(frame, size) for frame in clip]) for clip, _ in ti2v])
        unconditional = sample([caption for _, caption in ti2v], seeds=[int(self.config.seed) + 1000 + i
                                                                        for i in range(len(ti2v))])
        scores = ti2v_fidelity(samples=grids["ti2v"], true_clips=true, unconditional=unconditional)
        return {f"validation/{k}": v for k, v in scores.items()}

    def _fvd(self, fake_clips: list[np.ndarray]) -> float:
        """FVD of ``fake_clips`` against the first ``fvd_clips`` held-out clips, whose I3D features are computed
        at the first validation (in the same batches as its samples) and kept."""
        from stiv_jax.eval.fvd import fvd_from_features
        extractor = self._extractor()
        if self._real_features is None:
            real = [clip for clip, _ in self.heldout[:self.config.fvd_clips]]
            features = extractor(real + fake_clips)
            self._real_features, fake_features = features[:len(real)], features[len(real):]
        else:
            fake_features = extractor(fake_clips)
        return fvd_from_features(self._real_features, fake_features)

    def _extractor(self):
        """The I3D extractor, data-parallel over this process's devices of the training mesh (each device its own
        clips: the mesh's model axes would only replicate the work), compiled once per process."""
        from stiv_jax.eval.i3d import default_mesh, shared_extractor
        devices = None if self.mesh is None else [d for d in self.mesh.devices.flat
                                                  if d.process_index == jax.process_index()]
        return shared_extractor(8, mesh=default_mesh(devices))

    def _write_grid(self, step: int, name: str, grid_thwc: np.ndarray) -> None:
        base = os.path.join(self.workdir, "validation", f"step_{step:08d}_{name}")
        video_io.encode_mp4(grid_thwc, fps=self.fps, path=base + ".mp4")
        video_io.write_gif(grid_thwc, base + ".gif", fps=self.fps)
        with open(base + ".gif", "rb") as f:
            gif = f.read()
        from tensorboardX import FileWriter
        from tensorboardX.summary import Summary
        if self._tb is None:
            self._tb = FileWriter(os.path.join(self.workdir, "tensorboard"), filename_suffix=".validation")
        t, h, w, c = grid_thwc.shape
        image = Summary.Image(height=h, width=w, colorspace=c, encoded_image_string=gif)
        self._tb.add_summary(Summary(value=[Summary.Value(tag=f"validation/{name}", image=image)]), step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def fit_frame(image_hwc: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Center-crops to the aspect ratio of ``size_hw`` and resizes (bicubic): a held-out frame as a TI2V image."""
    from PIL import Image
    h, w = image_hwc.shape[:2]
    th, tw = size_hw
    scale = max(th / h, tw / w)
    ch, cw = int(round(th / scale)), int(round(tw / scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = Image.fromarray(np.ascontiguousarray(image_hwc[top:top + ch, left:left + cw]))
    return np.asarray(crop.resize((tw, th), Image.BICUBIC))


def for_run(run_config, workdir: str, bundle, *, mesh=None, rules=None, writer=None) -> Validator:
    """The :class:`Validator` of a training run: its sampler on the training mesh (``mesh``/``rules``), its metrics
    to ``writer`` (a ``MetricWriter``; None: returned only). The caller owns it and calls ``close``."""
    return Validator(run_config, workdir, make_sample_fn(run_config, bundle, mesh=mesh, rules=rules),
                     metric_writer=writer, mesh=mesh)


def make_sample_fn(run_config, bundle, *, mesh=None, rules=None) -> SampleFn:
    """The run's sampler as a :data:`SampleFn` (``config.sample`` solver and guidance; steps and scale unless
    validation overrides them): an :class:`~stiv_jax.eval.generation.EvalSampler` built once, whose batch holds
    every T2V prompt and every TI2V cell, so each validation reuses one compiled model call (``mesh``/``rules``:
    the training mesh the params live on)."""
    from stiv_jax.eval.generation import EvalSampler
    c = validation_config(run_config)
    batch = max(len(c.prompts), int(c.ti2v_samples) if c.heldout else 0, 1)
    return EvalSampler(run_config, bundle, num_steps=c.num_steps, cfg_scale=c.cfg_scale, batch_size=batch, mesh=mesh,
                       rules=rules)
