"""The generator on a tiny real DiT: JIT-CFG batching, exact given frames for every task, long video."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stiv_tiny import real_clip, tiny_bundle_and_params, tiny_config

from stiv_jax.diffusion import flow, tasks
from stiv_jax.diffusion.guidance import Guidance
from stiv_jax.sampling import long_video
from stiv_jax.sampling.generate import Generator, SolverSettings, default_micro_conditions
from numerics import assert_close


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    bundle, params = tiny_bundle_and_params(config)
    return config, bundle, params


@pytest.fixture(scope="module")
def generators(tiny):
    """One generator per solver, shared so that each compiles once for all tasks."""
    _, bundle, params = tiny
    return {solver: Generator(bundle, params, Guidance(mode="jit", scale=4.0),
                              SolverSettings(solver=solver, num_steps=3)) for solver in ("heun", "sde")}


def test_jit_cfg_scale_one_equals_the_conditional_prediction(tiny):
    config, bundle, params = tiny
    # Renorm on: at scale 1 the guided velocity is the conditional one, so renorm must leave it unchanged.
    gen = Generator(bundle, params, Guidance(mode="jit", scale=1.0, renorm=True), SolverSettings("euler", 3))
    shape = (2,) + bundle.latent_shape
    x, clean, noise = (jax.random.normal(jax.random.key(i), shape) for i in range(3))
    mask = jnp.zeros(shape[:2], bool).at[:, 0].set(True)
    t = jnp.array([0.25, 0.6])
    cond, null = gen.contexts(["a man in a car", "a red van"], default_micro_conditions(config, 2))
    guided = gen._velocity(params, x, t, clean, mask, noise, cond, null)
    expected = bundle.velocity(params, flow.replace_frames(x, clean, mask), t, cond["ids"], cond["mask"],
                               micro_conditions=cond["micro"])
    assert_close(guided, expected, ulps=64)
    uncond = bundle.velocity(params, x, t, cond["ids"] * 0, cond["mask"], micro_conditions=cond["micro"])
    assert float(jnp.abs(uncond - expected).max()) > 1e-3   # the prompt matters, so the check can fail


@pytest.mark.parametrize("task", ["ti2v", "predict", "interpolate", "upsample"])
@pytest.mark.parametrize("solver", ["heun", "sde"])
def test_sampled_given_frames_equal_the_given_clip_exactly(tiny, generators, task, solver):
    config, _, _ = tiny
    gen = generators[solver]
    clip = real_clip(4, 16)
    mask = tasks.task_frame_mask(task, 4, predict_frames=2)
    clean = gen.encode(clip[None])
    latents = gen.latents(["a man talks on the phone"], micro=default_micro_conditions(config, 1), seed=0,
                          clean=clean, frame_mask=mask)
    np.testing.assert_array_equal(np.asarray(latents)[0, mask], np.asarray(clean)[0, mask])
    video = gen.to_uint8(latents)[0]
    np.testing.assert_array_equal(video[mask], clip[mask])      # pixel-exact through the latent space
    assert not np.array_equal(video[~mask], clip[~mask])


class RecordingGenerator(Generator):
    """Records the micro-conditions and masks of every pass."""

    passes = []

    def latents(self, prompts, *, micro, **kwargs):
        self.passes.append((np.asarray(micro), kwargs.get("frame_mask")))
        return super().latents(prompts, micro=micro, **kwargs)


def test_long_video_is_key_frames_then_interpolated_intervals(tiny):
    config, bundle, params = tiny
    gen = RecordingGenerator(bundle, params, Guidance(mode="jit", scale=2.0), SolverSettings("euler", 3))
    image = gen.encode(np.repeat(real_clip(1, 16), 4, axis=0)[None])
    video = long_video.generate_long(gen, config, "a man in a car", seed=5, image_latents=image)
    n = bundle.latent_shape[0]
    # Every frame once: N - 1 intervals of N frames sharing their N - 2 inner key frames.
    assert video.shape == (1, (n - 1) * (n - 1) + 1) + bundle.latent_shape[1:]
    (key_micro, key_mask), (int_micro, int_mask) = gen.passes
    # The frame-stride micro-condition is switched per mode; the intervals are told the key frames' spacing:
    # key frames 6 source frames apart, filled by 4 frames (3 gaps) at stride 2.
    assert key_micro[0, tasks.FRAME_STRIDE_INDEX] == config.diffusion.long_keyframe_stride == 6
    assert np.all(int_micro[:, tasks.FRAME_STRIDE_INDEX] * (n - 1) == config.diffusion.long_keyframe_stride)
    np.testing.assert_array_equal(key_mask, tasks.task_frame_mask("long_keyframe", n))
    np.testing.assert_array_equal(int_mask, tasks.task_frame_mask("long_interpolate", n))
    # The key frames of the first pass (same seed -> same key frames) sit at their positions.
    keys = gen.latents(["a man in a car"], micro=key_micro, seed=5, clean=image, frame_mask=key_mask)[0]
    frames = np.asarray(video[0])
    positions = long_video.keyframe_positions(n)
    assert positions[-1] == len(frames) - 1
    np.testing.assert_array_equal(frames[positions], np.asarray(keys))
    np.testing.assert_array_equal(np.asarray(keys)[0], np.asarray(image)[0, 0])   # TI2V first key frame
    # No frame is repeated: every consecutive pair differs (the model generated every in-between frame).
    assert all(not np.array_equal(frames[i], frames[i + 1]) for i in range(len(frames) - 1))


def test_key_frames_no_interval_can_fill_are_refused(tiny):
    config, bundle, params = tiny
    config = config.copy_and_resolve_references()
    config.diffusion.long_keyframe_stride = 7   # 4 frames: 3 gaps, 7 / 3 source frames each
    gen = RecordingGenerator(bundle, params, Guidance(mode="jit", scale=2.0), SolverSettings("euler", 3))
    before = len(gen.passes)
    with pytest.raises(ValueError, match=r"long_keyframe_stride=7 .*multiple of 3"):
        long_video.generate_long(gen, config, "a man in a car", seed=5)
    assert len(gen.passes) == before   # refused before any sampling


def test_tup_cascade_doubles_the_frames_and_keeps_the_input_at_the_even_positions(tiny):
    """The cascade of a main model's video through the temporal upsampler (here the tiny model, 4-frame clips:
    windows of 2 given frames): 2F frames, the input ones unchanged at 0, 2, 4, ..., new ones between."""
    from stiv_jax.sampling import cascade
    from stiv_jax.sampling.run import Upsampler
    config, bundle, params = tiny
    gen = RecordingGenerator(bundle, params, Guidance(mode="jit", scale=2.0), SolverSettings("euler", 3))
    video = real_clip(5, 16)          # 5 frames: 3 windows of 2, the last one padded
    before = len(gen.passes)
    out = cascade.upsample_video(gen, config, video, "a man in a car", seed=3)
    assert out.shape == (10, 16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0::2], video)
    assert all(not np.array_equal(out[i], out[i + 1]) for i in range(len(out) - 1))
    (micro, mask), = gen.passes[before:]   # one batched pass over the windows
    assert micro.shape[0] == 3
    np.testing.assert_array_equal(mask, tasks.task_frame_mask("upsample", 4))
    # A larger main-model video is brought to the TUP's resolution; the wrapper keeps batch and prompts aligned.
    both = Upsampler(gen, config)(np.stack([real_clip(4, 32)] * 2), ["a red van", "a man in a car"], [0, 1])
    assert both.shape == (2, 8, 16, 16, 3) and not np.array_equal(both[0, 1], both[1, 1])
    with pytest.raises(ValueError, match="uint8 video"):
        cascade.upsample_video(gen, config, video.astype(np.float32), "x", seed=0)
