"""Task layouts and the per-sample task sampler (tasks, text dropout, image dropout)."""
import jax
import numpy as np
import pytest

from stiv_jax.diffusion import tasks

F = 8


def _mask(s):
    return np.array([c == "X" for c in s.replace(" ", "")])


@pytest.mark.parametrize("layout, expected", [
    ("t2v", ". . . . . . . ."),
    ("ti2v", "X . . . . . . ."),
    ("predict", "X X X X . . . ."),
    ("interpolate", "X . . . . . . X"),
    ("upsample", "X . X . X . X ."),
    ("multiview", "X . . . . . . ."),
    ("long_keyframe", "X . . . . . . ."),
    ("long_interpolate", "X . . . . . . X"),
])
def test_each_task_has_its_documented_layout(layout, expected):
    np.testing.assert_array_equal(tasks.task_frame_mask(layout, F, predict_frames=4), _mask(expected))


def _sampler(weights, **kw):
    args = dict(frames=F, weights=weights, text_dropout=0.0, image_dropout=0.0)
    args.update(kw)
    return tasks.TaskSampler(**args)


@pytest.mark.parametrize("task", ["t2v", "ti2v", "predict", "interpolate", "upsample", "multiview"])
def test_sampler_with_one_task_gives_its_layout_to_every_sample(task):
    cond = _sampler({task: 1.0})(jax.random.key(0), 16)
    expected = tasks.task_frame_mask(task, F)
    np.testing.assert_array_equal(np.asarray(cond.frame_mask), np.tile(expected, (16, 1)))
    np.testing.assert_array_equal(np.asarray(cond.loss_mask), np.tile(~expected, (16, 1)).astype(np.float32))
    # Multi-view always uses the empty prompt; other tasks keep it (text dropout 0 here).
    assert bool(np.all(np.asarray(cond.drop_text) == (task == "multiview")))


def test_long_task_mode_follows_the_frame_stride_micro_condition():
    sampler = _sampler({"long": 1.0}, long_keyframe_stride=21)   # 8 frames: 7 gaps at stride 3
    cond = sampler(jax.random.key(0), 4, np.array([3.0, 21.0, 2.0, 40.0]))
    layout = [tasks.LAYOUTS[i] for i in np.asarray(cond.layout)]
    assert layout == ["long_interpolate", "long_keyframe", "long_interpolate", "long_keyframe"]
    np.testing.assert_array_equal(np.asarray(cond.frame_mask)[1], tasks.task_frame_mask("long_keyframe", F))
    np.testing.assert_array_equal(np.asarray(cond.frame_mask)[0], tasks.task_frame_mask("long_interpolate", F))


def test_long_task_refuses_key_frames_no_interval_can_fill():
    with pytest.raises(ValueError, match=r"long_keyframe_stride=20 with config.data.frames=8.*multiple of 7"):
        _sampler({"long": 1.0}, long_keyframe_stride=20)
    _sampler({"t2v": 1.0}, long_keyframe_stride=20)   # not checked when the long task is off


def test_task_frequencies_follow_the_config_weights():
    cond = _sampler({"t2v": 1.0, "ti2v": 3.0})(jax.random.key(1), 40_000)
    frac_ti2v = float(np.mean(np.asarray(cond.layout) == tasks.LAYOUTS.index("ti2v")))
    assert abs(frac_ti2v - 0.75) < 0.01


def test_text_and_image_dropout_are_independent_at_10_and_8_percent():
    cond = _sampler({"ti2v": 1.0}, text_dropout=0.1, image_dropout=0.08)(jax.random.key(2), 200_000)
    text = np.asarray(cond.drop_text)
    image = ~np.asarray(cond.frame_mask)[:, 0]      # null_image=noisy: a dropped image gives no replacement
    assert abs(text.mean() - 0.1) < 0.003 and abs(image.mean() - 0.08) < 0.003
    assert abs((text & image).mean() - 0.008) < 0.001   # joint drop = product (independence)
    assert not np.asarray(cond.zero_image).any()


def test_zero_null_image_keeps_replacement_with_zero_latents():
    cond = _sampler({"ti2v": 1.0}, image_dropout=0.5, null_image="zero")(jax.random.key(3), 1000)
    assert np.asarray(cond.frame_mask)[:, 0].all()          # frame 0 is always replaced and loss-masked
    assert 0.4 < np.asarray(cond.zero_image).mean() < 0.6   # with zeros for the dropped half


def test_config_typos_and_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"config.diffusion.tasks has unknown task\(s\) \['t2i'\]"):
        _sampler({"t2i": 1.0})
    with pytest.raises(ValueError, match="config.diffusion.null_image"):
        _sampler({"t2v": 1.0}, null_image="black")
    with pytest.raises(ValueError, match="positive sum"):
        _sampler({"t2v": 0.0})
    with pytest.raises(ValueError, match="predict_frames"):
        _sampler({"predict": 1.0}, predict_frames=8)
