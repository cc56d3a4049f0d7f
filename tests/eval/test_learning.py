"""The learning benchmark's scores: the digit classifier, the motion reader, PSNR/SSIM and TI2V fidelity."""
import numpy as np
import pytest

from stiv_jax.data import holdout, procedural, schema
from stiv_jax.eval import learning


def test_digit_scorer_is_deterministic():
    a, b = learning.DigitScorer(frames=1500), learning.DigitScorer(frames=1500)
    np.testing.assert_array_equal(a.model.coef_, b.model.coef_)
    video = procedural.render(procedural.random_spec(np.random.default_rng(3), frames=8), frames=8)
    np.testing.assert_array_equal(a.log_probs(video), b.log_probs(video))


def test_score_t2v_is_deterministic_and_counts_what_the_prompts_name():
    rng = np.random.default_rng(7)
    specs = [procedural.random_spec(rng, frames=8, split="any") for _ in range(10)]
    videos = np.stack([procedural.render(s, frames=8) for s in specs])
    right = [s.caption for s in specs]
    flipped = {"left": "right", "right": "left", "up": "down", "down": "up"}
    wrong_way = [procedural.caption(s.digit, s.colour, flipped[s.direction], s.speed) for s in specs]
    first = learning.score_t2v(videos, right)
    assert first == learning.score_t2v(videos, right)
    assert first["direction"] == 1.0 and first["speed"] == 1.0 and first["adherence"] >= 0.9
    assert learning.score_t2v(videos, wrong_way)["direction"] == 0.0


def test_motion_reads_direction_and_speed_and_a_still_track_as_none():
    t = np.arange(8, dtype=np.float64)[:, None]
    assert learning.motion(np.hstack([10 - 2 * t, 0 * t + 5])) == ("left", "quickly")
    assert learning.motion(np.hstack([0 * t + 5, 3 + t])) == ("down", "slowly")
    assert learning.motion(np.hstack([0 * t + 5, 0 * t + 5])) == ("none", "none")
    assert learning.motion(np.full((8, 2), np.nan)) == ("none", "none")


def test_psnr_of_a_known_error_and_of_identical_arrays():
    a = np.full((4, 8, 8, 3), 100, np.uint8)
    assert learning.psnr(a, a) == float("inf")
    assert learning.psnr(a, a + 5) == pytest.approx(20 * np.log10(255 / 5))
    with pytest.raises(ValueError, match="shapes differ"):
        learning.psnr(a, a[:2])


def test_ssim_is_one_for_identical_images_symmetric_and_falls_with_noise():
    rng = np.random.default_rng(0)
    image = procedural.render(procedural.random_spec(rng, frames=2), frames=2)
    noisy = np.clip(image + rng.normal(0, 20, image.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(image + rng.normal(0, 60, image.shape), 0, 255).astype(np.uint8)
    assert learning.ssim(image, image) == pytest.approx(1.0)
    assert learning.ssim(image, noisy) == pytest.approx(learning.ssim(noisy, image))
    assert 1.0 > learning.ssim(image, noisy) > learning.ssim(image, noisier)


def test_ti2v_fidelity_scores_a_perfect_continuation_above_the_static_copy():
    rng = np.random.default_rng(1)
    clips = np.stack([procedural.render(procedural.random_spec(rng, frames=8), frames=8) for _ in range(3)])
    static = np.repeat(clips[:, :1], 8, axis=1)
    scores = learning.ti2v_fidelity(samples=clips, true_clips=clips, unconditional=static)
    assert scores["ti2v_psnr"] == float("inf") and scores["ti2v_ssim"] == pytest.approx(1.0)
    assert scores["t2v_psnr"] == pytest.approx(scores["static_psnr"]) and np.isfinite(scores["static_psnr"])


def test_to_fvd_frames_repeats_each_frame():
    video = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    out = learning.to_fvd_frames(video)
    assert out.shape == (16, 2, 2, 3) and list(out[:, 0, 0, 0]) == [i // 2 for i in range(16)]


def _clip(source: str, start: float) -> bytes:
    video = np.zeros((2, 16, 16, 3), np.uint8)
    meta = dict(source=source, start_sec=start, end_sec=start + 1, start_frame=int(start * 8), scene_index=0,
                fps=8.0, width=16, height=16, num_frames=2, duration=0.25, motion_score=0.0, keyint=2)
    from stiv_jax.data import video_io
    return schema.encode_record(video=video_io.encode_mp4(video, fps=8), caption=f"{source}@{start}", meta=meta)


def test_holdout_keeps_the_last_clips_of_every_source():
    records = [_clip("a.mp4", s) for s in (3.0, 0.0, 1.0, 2.0)] + [_clip("b.mp4", s) for s in (0.0, 1.0)]
    train, held = holdout.split_by_source_time(records, fraction=0.25)
    caption = lambda r: schema.decode_record(r)["caption"]  # noqa: E731
    assert [caption(r) for r in held] == ["a.mp4@3.0", "b.mp4@1.0"]
    assert [caption(r) for r in train] == ["a.mp4@0.0", "a.mp4@1.0", "a.mp4@2.0", "b.mp4@0.0"]
    with pytest.raises(ValueError, match="--fraction"):
        holdout.split_by_source_time(records, fraction=1.5)


def test_frame_strip_puts_a_video_per_row_and_a_frame_per_column():
    from stiv_jax.eval.validation import frame_strip
    videos = np.zeros((2, 3, 4, 4, 3), np.uint8)
    videos[1, 2] = 255
    strip = frame_strip(videos, pad=1, scale=1)
    assert strip.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
    assert strip[6:10, 11:15].min() == 255 and strip[1:5, 11:15].max() == 0
