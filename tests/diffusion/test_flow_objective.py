"""Flow-matching objective: exact velocity gives zero loss, conditioning frames carry no gradient, timesteps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiv_jax.diffusion import flow, tasks

SHAPE = (3, 5, 4, 4, 6)   # [batch, frames, height, width, channels]


def _data(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, SHAPE), jax.random.normal(k2, SHAPE)


def test_loss_is_zero_for_the_exact_velocity_and_positive_otherwise():
    x1, noise = _data()
    assert float(flow.flow_matching_loss(x1 - noise, x1, noise)) == 0.0
    assert float(flow.flow_matching_loss(x1 - noise + 0.1, x1, noise)) == pytest.approx(0.01, rel=1e-5)


def test_loss_ignores_conditioning_frames_and_averages_over_the_rest():
    x1, noise = _data()
    loss_mask = jnp.ones(SHAPE[:2]).at[:, 0].set(0.0)
    wrong_on_given = (x1 - noise).at[:, 0].add(5.0)
    assert float(flow.flow_matching_loss(wrong_on_given, x1, noise, loss_mask)) == 0.0
    # An error of 0.2 on the generated frames only: the mean over the remaining elements is 0.04, not 0.04 * 4/5.
    wrong_elsewhere = (x1 - noise).at[:, 1:].add(0.2)
    assert float(flow.flow_matching_loss(wrong_elsewhere, x1, noise, loss_mask)) == pytest.approx(0.04, rel=1e-5)


def _frame_mixing_model(w):
    """A model whose output at every frame depends on every input frame (like temporal attention)."""
    def model(x):
        return jnp.tanh(x * w + x.mean(axis=1, keepdims=True))
    return model


def test_gradients_through_conditioning_frames_are_zero():
    x1, noise = _data(1)
    t = jnp.array([0.2, 0.5, 0.9])
    cond = tasks.Conditioning(frame_mask=jnp.zeros(SHAPE[:2], bool).at[:, [0, 4]].set(True),
                              zero_image=jnp.zeros((3,), bool), drop_text=jnp.zeros((3,), bool),
                              layout=jnp.zeros((3,), jnp.int32))
    model = _frame_mixing_model(0.7)

    def loss(noise):
        x_in = cond.model_input(flow.interpolate(x1, noise, t), x1)
        return flow.flow_matching_loss(model(x_in), x1, noise, cond.loss_mask)

    g = np.asarray(jax.grad(loss)(noise))
    assert np.all(g[:, [0, 4]] == 0.0)
    assert np.all(np.abs(g[:, 1:4]).sum(axis=(2, 3, 4)) > 0)
    # Without frame replacement the same model passes gradient into frames 0 and 4 (the test can fail).
    g_plain = jax.grad(lambda n: flow.flow_matching_loss(model(flow.interpolate(x1, n, t)), x1, n,
                                                         cond.loss_mask))(noise)
    assert np.abs(np.asarray(g_plain)[:, 0]).sum() > 0


def test_model_input_puts_clean_or_zero_latents_in_given_frames_only():
    x1, noise = _data(2)
    mask = jnp.zeros(SHAPE[:2], bool).at[:, 0].set(True)
    cond = tasks.Conditioning(frame_mask=mask, zero_image=jnp.array([False, True, False]),
                              drop_text=jnp.zeros((3,), bool), layout=jnp.zeros((3,), jnp.int32))
    out = np.asarray(cond.model_input(noise, x1))
    np.testing.assert_array_equal(out[[0, 2], 0], np.asarray(x1)[[0, 2], 0])
    np.testing.assert_array_equal(out[1, 0], 0.0)
    np.testing.assert_array_equal(out[:, 1:], np.asarray(noise)[:, 1:])


def test_uniform_and_logit_normal_timesteps_have_their_moments():
    rng = jax.random.key(0)
    u = np.asarray(flow.sample_timesteps(rng, 100_000, distribution="uniform"))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    ln = np.asarray(flow.sample_timesteps(rng, 100_000, distribution="logit_normal", mean=0.5, std=0.8))
    logits = np.log(ln / (1 - ln))
    assert abs(logits.mean() - 0.5) < 0.02 and abs(logits.std() - 0.8) < 0.02
    with pytest.raises(ValueError, match="timestep_distribution"):
        flow.sample_timesteps(rng, 4, distribution="lognormal")


def test_shift_is_sd3_shift_on_the_noise_level_and_moves_mass_towards_noise():
    t = np.linspace(0.01, 0.99, 50)
    sigma = 1 - t
    expected = 1 - 3.0 * sigma / (1 + 2.0 * sigma)
    np.testing.assert_allclose(flow.shift_timesteps(t, 3.0), expected, rtol=1e-12)
    np.testing.assert_allclose(flow.shift_timesteps(t, 1.0), t)
    shifted = np.asarray(flow.sample_timesteps(jax.random.key(1), 50_000, distribution="uniform", shift=3.0))
    # Median of the shifted uniform: shift_timesteps(0.5, 3) = 0.25.
    assert abs(np.median(shifted) - 0.25) < 0.01


def test_resolution_and_duration_shift_is_sqrt_of_the_position_ratio():
    assert flow.resolution_shift((8, 32, 32, 4), 8 * 16 * 16) == pytest.approx(2.0)      # 2x resolution
    assert flow.resolution_shift((32, 16, 16, 4), 8 * 16 * 16) == pytest.approx(2.0)     # 4x duration
    assert flow.resolution_shift((8, 32, 32, 4), 0) == 1.0
