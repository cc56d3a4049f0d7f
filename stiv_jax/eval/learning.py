"""Scores of what a model does: digit adherence and motion of T2V samples, TI2V fidelity, FVD of short clips.

*Adherence and motion* (prompts of ``stiv_jax.data.procedural``, "a red 3 moves left slowly"): a sample's
foreground is its bright pixels (a channel above the grey procedural background's 15..75, ``foreground``); its centroid
per frame gives a track whose least-squares displacement names the direction (the dominant axis and its sign;
less than half the slow travel counts as not moving) and the speed (pixels per frame over 1.5 is "quickly").
The digit is read by an independent classifier, :class:`DigitScorer`: a logistic regression trained once on
foreground crops of clean rendered frames (never on model samples), applied to a crop centred on the centroid of
every frame, log-probabilities summed over frames. Its colour is the ``procedural.COLOURS`` entry nearest to the
foreground's mean. Chance: 10% adherence, 25% direction, 50% speed, 17% colour.

*TI2V fidelity*: PSNR and SSIM of generated frames 1..T-1 against the true continuation of the clip whose frame 0
was given, beside the static copy (frame 0 repeated) and an unconditional sample (same caption, no image).

*FVD* of 8-frame clips: I3D needs at least 9 frames (``i3d.MIN_FRAMES``), so both sets are brought to 16 frames by
repeating every frame (``to_fvd_frames``) before the project's FVD (``fvd.fvd_of_clips``).

All functions take uint8 videos ``[frames, height, width, 3]`` (any square size; resized to 32 for scoring) and are
deterministic.
"""
from __future__ import annotations

import functools

import numpy as np

from stiv_jax.data import procedural

SCORE_SIZE = procedural.REFERENCE_SIZE   # samples are scored at the generator's reference size
CROP = procedural.DIGIT_SIDE + 4         # classifier window side (20), centred on the foreground centroid
BRIGHT_LOW, BRIGHT_HIGH = 100.0, 160.0   # foreground weight ramps from 0 to 1 as the brightest channel does
FAST_PIXELS_PER_FRAME = 1.5              # between the slow (1) and quick (2) speeds
CLASSIFIER_FRAMES = 6000                 # clean training frames of the digit classifier


def to_score_size(video_thwc: np.ndarray) -> np.ndarray:
    """float32 ``[frames, 32, 32, 3]``: ``video`` resized (bilinear, PIL) to the scoring size."""
    video = np.asarray(video_thwc)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video [frames, height, width, 3], got shape {video.shape}")
    if video.shape[1:3] == (SCORE_SIZE, SCORE_SIZE):
        return video.astype(np.float32)
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(np.asarray(f, np.uint8)).resize((SCORE_SIZE, SCORE_SIZE),
                                                                                  Image.BILINEAR), np.float32)
                     for f in video])


def foreground(video_thwc: np.ndarray) -> np.ndarray:
    """float32 ``[frames, 32, 32]`` in [0, 1]: how much each pixel belongs to the digit, from its brightest channel
    (every digit colour has one channel >= 230; the grey background stays <= 75)."""
    brightest = to_score_size(video_thwc).max(axis=-1)
    return np.clip((brightest - BRIGHT_LOW) / (BRIGHT_HIGH - BRIGHT_LOW), 0.0, 1.0)


def centroids(weights_thw: np.ndarray) -> np.ndarray:
    """float64 ``[frames, 2]`` (x, y) foreground centroid of every frame; NaN where a frame has no foreground."""
    t, h, w = weights_thw.shape
    total = weights_thw.sum(axis=(1, 2))
    ys, xs = np.mgrid[0:h, 0:w]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (weights_thw * xs).sum(axis=(1, 2)) / total
        cy = (weights_thw * ys).sum(axis=(1, 2)) / total
    out = np.stack([cx, cy], axis=-1).astype(np.float64)
    out[total < 1.0] = np.nan
    return out


def motion(track_t2: np.ndarray) -> tuple[str, str]:
    """``(direction, speed)`` of a centroid track: 'none' when fewer than two frames have a centroid or the fitted
    travel is under half the slow speed's travel."""
    valid = ~np.isnan(track_t2).any(axis=1)
    t = np.flatnonzero(valid).astype(np.float64)
    if len(t) < 2:
        return "none", "none"
    slope = np.polyfit(t, track_t2[valid], 1)[0]          # pixels per frame, (x, y)
    frames = len(track_t2)
    if np.abs(slope).max() * (frames - 1) < 0.5 * procedural.SPEEDS["slowly"] * (frames - 1):
        return "none", "none"
    axis = int(np.argmax(np.abs(slope)))
    direction = ("left", "right")[int(slope[0] > 0)] if axis == 0 else ("up", "down")[int(slope[1] > 0)]
    return direction, "quickly" if np.abs(slope).max() > FAST_PIXELS_PER_FRAME else "slowly"


def crops(weights_thw: np.ndarray, track_t2: np.ndarray) -> np.ndarray:
    """float32 ``[frames, CROP * CROP]``: the foreground window centred on each frame's centroid (zeros outside
    the frame; a frame without a centroid gives its centre window)."""
    t, h, w = weights_thw.shape
    half = CROP // 2
    padded = np.pad(weights_thw, ((0, 0), (half, half), (half, half)))
    out = np.empty((t, CROP * CROP), np.float32)
    for i in range(t):
        cx, cy = (w / 2, h / 2) if np.isnan(track_t2[i]).any() else track_t2[i]
        left, top = int(round(cx)), int(round(cy))   # padded coordinates: centroid + half - half
        out[i] = padded[i, top:top + CROP, left:left + CROP].reshape(-1)
    return out


class DigitScorer:
    """Names the digit of a video: a logistic regression over centroid-centred foreground crops of clean frames.

    Trained once per process (:func:`digit_scorer`) on ``CLASSIFIER_FRAMES`` frames rendered by
    ``procedural.render`` with every colour, direction, speed and position, from a fixed seed: deterministic.
    """

    def __init__(self, *, seed: int = 12345, frames: int = CLASSIFIER_FRAMES):
        from sklearn.linear_model import LogisticRegression
        rng = np.random.default_rng(seed)
        features, labels = [], []
        while len(labels) < frames:
            spec = procedural.random_spec(rng, frames=4, split="any")
            video = procedural.render(spec, frames=4)
            weights = foreground(video)
            features.append(crops(weights, centroids(weights)))
            labels += [spec.digit] * len(video)
        self.model = LogisticRegression(max_iter=1000, C=0.5)
        self.model.fit(np.concatenate(features)[:frames], np.asarray(labels[:frames]))

    def log_probs(self, video_thwc: np.ndarray) -> np.ndarray:
        """float64 ``[10]``: per-frame digit log-probabilities summed over the video's frames."""
        weights = foreground(video_thwc)
        return self.model.predict_log_proba(crops(weights, centroids(weights))).sum(axis=0)

    def digit(self, video_thwc: np.ndarray) -> int:
        return int(np.argmax(self.log_probs(video_thwc)))


@functools.lru_cache(maxsize=1)
def digit_scorer() -> DigitScorer:
    """The process's :class:`DigitScorer` (trained on first use, a few seconds)."""
    return DigitScorer()


def colour(video_thwc: np.ndarray) -> str:
    """The ``procedural.COLOURS`` name nearest (RGB distance) to the mean colour of the digit's core (foreground
    weight to the 4th power); 'none' when the video has no foreground."""
    weights = foreground(video_thwc)[..., None]
    if weights.sum() < 1.0:
        return "none"
    weights = weights ** 4    # the digit's core: edge pixels blend in the grey background (and codec chroma)
    mean = (to_score_size(video_thwc) * weights).sum(axis=(0, 1, 2)) / weights.sum()
    names = list(procedural.COLOURS)
    return names[int(np.argmin([np.linalg.norm(mean - np.asarray(procedural.COLOURS[n])) for n in names]))]


def score_video(video_thwc: np.ndarray, prompt: str, *, scorer: DigitScorer | None = None) -> dict:
    """``{'digit', 'direction', 'speed', 'colour'}`` read from the video and ``{'digit_ok', 'direction_ok',
    'speed_ok', 'colour_ok'}`` against what ``prompt`` (a procedural caption) names."""
    wanted = procedural.parse_caption(prompt)
    scorer = scorer or digit_scorer()
    direction, speed = motion(centroids(foreground(video_thwc)))
    digit, hue = scorer.digit(video_thwc), colour(video_thwc)
    return dict(digit=digit, direction=direction, speed=speed, colour=hue, digit_ok=digit == wanted["digit"],
                direction_ok=direction == wanted["direction"], speed_ok=speed == wanted["speed"],
                colour_ok=hue == wanted["colour"])


def score_t2v(videos: list[np.ndarray] | np.ndarray, prompts: list[str], *,
              scorer: DigitScorer | None = None) -> dict[str, float]:
    """``{'adherence', 'direction', 'speed', 'colour'}``: the share of ``videos`` (uint8 ``[n, frames, h, w, 3]``)
    whose digit, direction, speed and colour are what their ``prompts`` name."""
    if len(videos) != len(prompts) or not len(prompts):
        raise ValueError(f"{len(videos)} videos for {len(prompts)} prompts; give one video per prompt (>= 1)")
    rows = [score_video(v, p, scorer=scorer) for v, p in zip(videos, prompts)]
    return {name: float(np.mean([r[f"{key}_ok"] for r in rows]))
            for name, key in (("adherence", "digit"), ("direction", "direction"), ("speed", "speed"),
                              ("colour", "colour"))}


def score_tint(videos: list[np.ndarray] | np.ndarray, prompts: list[str]) -> float:
    """Share of ``videos`` whose mean colour, relative to the mean of the whole set, points (cosine) towards the
    colour their prompt names, among the six ``procedural.COLOURS`` relative to their own mean. The first sign
    that the text reaches the pixels, long before any digit has a shape: a tinted frame counts, no foreground is
    needed. Identical videos (an untrained model) score the share of prompts naming the first colour."""
    if len(videos) != len(prompts) or len(prompts) < 2:
        raise ValueError(f"{len(videos)} videos for {len(prompts)} prompts; give one video per prompt (>= 2)")
    means = np.stack([to_score_size(v).reshape(-1, 3).mean(0) for v in videos]).astype(np.float64)
    residual = means - means.mean(0)
    names = list(procedural.COLOURS)
    palette = np.asarray([procedural.COLOURS[n] for n in names], np.float64)
    palette -= palette.mean(0)
    cosine = (residual @ palette.T) / (np.linalg.norm(residual, axis=1, keepdims=True)
                                       * np.linalg.norm(palette, axis=1)[None] + 1e-9)
    picked = [names[i] for i in cosine.argmax(axis=1)]
    return float(np.mean([p == procedural.parse_caption(q)["colour"] for p, q in zip(picked, prompts)]))


# ---------------------------------------------------------------------------------------------- fidelity
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of one shape (peak 255); identical arrays give ``inf``."""
    a, b = _same_shape(a, b)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03) of two uint8 images or videos
    ``[..., height, width, 3]``, per channel and frame, averaged."""
    from scipy.ndimage import gaussian_filter
    a, b = _same_shape(a, b)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a = a.reshape((-1,) + a.shape[-3:])
    b = b.reshape((-1,) + b.shape[-3:])
    sigma = (0, 1.5, 1.5, 0)   # blur height and width only; truncate=3.5 gives the reference 11x11 window
    blur = functools.partial(gaussian_filter, sigma=sigma, truncate=3.5, mode="reflect")
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def _same_shape(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return a, b


def ti2v_fidelity(*, samples: np.ndarray, true_clips: np.ndarray, unconditional: np.ndarray | None = None
                  ) -> dict[str, float]:
    """Mean PSNR/SSIM of frames 1..T-1 against the true continuation.

    Args:
      samples: uint8 ``[n, frames, h, w, 3]`` TI2V samples (frame 0 of ``true_clips`` given).
      true_clips: uint8 ``[n, frames, h, w, 3]`` the real clips.
      unconditional: optional uint8 ``[n, frames, h, w, 3]`` samples of the same captions without the image.

    Returns:
      ``ti2v_psnr``, ``ti2v_ssim``, ``static_psnr``, ``static_ssim`` (frame 0 repeated), and ``t2v_psnr``,
      ``t2v_ssim`` when ``unconditional`` is given.
    """
    true_clips = np.asarray(true_clips)
    static = np.repeat(true_clips[:, :1], true_clips.shape[1], axis=1)
    sets = {"ti2v": samples, "static": static}
    if unconditional is not None:
        sets["t2v"] = unconditional
    out = {}
    for name, videos in sets.items():
        videos = np.asarray(videos)
        out[f"{name}_psnr"] = float(np.mean([psnr(v[1:], c[1:]) for v, c in zip(videos, true_clips)]))
        out[f"{name}_ssim"] = float(np.mean([ssim(v[1:], c[1:]) for v, c in zip(videos, true_clips)]))
    return out


def to_fvd_frames(video_thwc: np.ndarray, frames: int = 16) -> np.ndarray:
    """uint8 ``[frames, h, w, 3]``: every frame repeated so short clips reach I3D's length (8 -> 16: twice)."""
    video = np.asarray(video_thwc)
    repeat = -(-frames // len(video))
    return np.repeat(video, repeat, axis=0)[:frames]
