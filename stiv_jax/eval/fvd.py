r"""Fréchet Video Distance (Unterthiner et al. 2019) with the Kinetics-400 I3D network.

  python -m stiv_jax.eval.fvd --real=DIR_OR_SHARDS --fake=DIR_OF_MP4 [--num_frames=16] [--max_clips=2048]

``--real`` / ``--fake``: a directory or glob of videos, or of ArrayRecord clip shards (``stiv_jax.data``).
Each video gives ``--clips_per_video`` windows of ``--num_frames`` frames from its start (see ``clips.py``).
Prints the FVD and the clip counts; unreadable or too-short videos are skipped and listed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from absl import app, flags

from stiv_jax.eval import clips as clips_lib
from stiv_jax.eval.frechet import frechet_distance, gaussian_stats
from stiv_jax.eval.i3d import MIN_FRAMES, I3DFeatureExtractor


def fvd_from_features(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """FVD of two I3D feature sets ``[num_clips, 400]`` (float64 Fréchet distance of their Gaussians)."""
    return frechet_distance(gaussian_stats(real_features), gaussian_stats(fake_features))


def fvd_of_clips(real_clips: Iterable[np.ndarray], fake_clips: Iterable[np.ndarray], *,
                 extractor: I3DFeatureExtractor) -> float:
    """FVD between two sets of uint8 clips ``[frames, height, width, 3]`` (arrays or iterables of clips)."""
    return fvd_from_features(extractor(real_clips), extractor(fake_clips))


@dataclass
class FVDResult:
    fvd: float
    real: clips_lib.ClipSetReport
    fake: clips_lib.ClipSetReport

    def summary(self) -> str:
        lines = [f"FVD {self.fvd:.2f} (real clips: {self.real.clips}, fake clips: {self.fake.clips})"]
        for which, report in (("real", self.real), ("fake", self.fake)):
            lines += [f"  skipped {which} {name}: {why}" for name, why in report.skipped]
        return "\n".join(lines)


def fvd_of_sources(real: str, fake: str, *, windows: clips_lib.ClipWindows = clips_lib.ClipWindows(),
                   max_clips: int | None = None, extractor: I3DFeatureExtractor | None = None) -> FVDResult:
    """FVD between the clips of two directories/globs of videos or shards (see module docstring)."""
    for source in (real, fake):
        clips_lib.list_clip_sources(source)  # a wrong path fails before any feature is computed
    extractor = extractor or I3DFeatureExtractor()
    reports = clips_lib.ClipSetReport(), clips_lib.ClipSetReport()
    # Both sets stream through one extractor call, so only the last batch is padded; the real clips come first.
    both = extractor(itertools.chain(*(clips_lib.iter_clips(source, windows, max_clips=max_clips, report=report)
                                       for source, report in zip((real, fake), reports))))
    features = both[:reports[0].clips], both[reports[0].clips:]
    for (source, report), feats in zip(zip((real, fake), reports), features):
        if len(feats) < 2:
            raise ValueError(f"{source!r} gave {len(feats)} usable clips of {windows.num_frames} frames; "
                             f"FVD needs at least 2 (skipped: {report.skipped})")
    return FVDResult(fvd=fvd_from_features(*features), real=reports[0], fake=reports[1])


def main(argv):
    del argv
    f = flags.FLAGS
    if f.num_frames < MIN_FRAMES:
        raise app.UsageError(f"--num_frames={f.num_frames}: I3D needs at least {MIN_FRAMES} frames (FVD uses 16)")
    windows = clips_lib.ClipWindows(num_frames=f.num_frames, frame_stride=f.frame_stride,
                                    clips_per_video=f.clips_per_video)
    try:
        result = fvd_of_sources(f.real, f.fake, windows=windows, max_clips=f.max_clips,
                                extractor=I3DFeatureExtractor(batch_size=f.batch_size))
    except (FileNotFoundError, ValueError) as e:   # a wrong path or too few usable clips: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    print(result.summary())


if __name__ == "__main__":
    flags.DEFINE_string("real", None, "Directory or glob of real videos or ArrayRecord clip shards.", required=True)
    flags.DEFINE_string("fake", None, "Directory or glob of generated videos (or shards).", required=True)
    flags.DEFINE_integer("num_frames", 16, "Frames per clip (FVD is defined on 16).")
    flags.DEFINE_integer("frame_stride", 1, "Source frames between kept frames.")
    flags.DEFINE_integer("clips_per_video", 1, "Non-overlapping windows taken from each video, from its start.")
    flags.DEFINE_integer("max_clips", None, "Clips used per set at most (default: all).")
    flags.DEFINE_integer("batch_size", 8, "Clips per I3D batch (rounded up to a multiple of the device count).")
    app.run(main)
