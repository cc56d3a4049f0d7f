"""Euler, Heun and SDE solvers on fields with known solutions; given frames are re-imposed exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiv_jax.diffusion import samplers

X0 = jnp.linspace(-2.0, 2.0, 2 * 3 * 2 * 2 * 1).reshape(2, 3, 2, 2, 1)


def linear_field(x, t):
    """dx/dt = -x + t, solved by x(t) = t - 1 + (x0 + 1) e^{-t}."""
    return -x + t[:, None, None, None, None]


ENDPOINT = (X0 + 1.0) * np.exp(-1.0)


def _error(solver, steps, shift=1.0):
    x = samplers.sample(linear_field, X0, num_steps=steps, solver=solver, shift=shift)
    return float(jnp.abs(x - ENDPOINT).max())


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_solvers_reach_the_analytic_endpoint_of_a_linear_field(solver):
    assert _error(solver, 200) < (5e-3 if solver == "euler" else 1e-5)
    assert _error(solver, 200, shift=3.0) < (2e-2 if solver == "euler" else 1e-4)   # shifted grid, same end


def test_euler_error_halves_and_heun_error_quarters_when_the_step_halves():
    euler = [_error("euler", n) for n in (10, 20, 40)]
    heun = [_error("heun", n) for n in (10, 20, 40)]
    for coarse, fine in zip(euler, euler[1:]):
        assert 1.8 < coarse / fine < 2.2, euler
    for coarse, fine in zip(heun, heun[1:]):
        assert 3.6 < coarse / fine < 4.4, heun


def test_timestep_grid_is_monotone_from_zero_to_one_and_shifted_towards_noise():
    grid = samplers.timestep_grid(10, shift=3.0)
    assert grid[0] == 0.0 and grid[-1] == 1.0 and np.all(np.diff(grid) > 0)
    assert grid[5] == pytest.approx(0.25)


@pytest.mark.parametrize("solver", ["euler", "heun", "sde"])
def test_given_frames_equal_the_given_latents_exactly(solver):
    clean = jax.random.normal(jax.random.key(1), X0.shape)
    mask = jnp.array([[True, False, True], [False, False, True]])
    x = samplers.sample(linear_field, X0, num_steps=7, solver=solver, rng=jax.random.key(2), clean=clean,
                        frame_mask=mask)
    x, clean = np.asarray(x), np.asarray(clean)
    np.testing.assert_array_equal(x[0, [0, 2]], clean[0, [0, 2]])
    np.testing.assert_array_equal(x[1, 2], clean[1, 2])
    assert not np.allclose(x[1, 0], clean[1, 0])


def gaussian_data_velocity(mu, s):
    """Exact flow-matching velocity E[x1 - eps | x_t] for data x1 ~ N(mu, s^2), eps ~ N(0, 1)."""
    def velocity(x, t):
        t = t[:, None]
        var = t ** 2 * s ** 2 + (1 - t) ** 2
        centred = x - t * mu
        return (mu + t * s ** 2 / var * centred) - (1 - t) / var * centred
    return velocity


@pytest.mark.parametrize("solver, kwargs", [("euler", {}), ("heun", {}), ("sde", {"noise_scale": 1.0}),
                                            ("sde", {"noise_scale": 3.0})])
def test_solvers_sample_the_data_distribution_of_the_exact_velocity(solver, kwargs):
    mu, s = 1.5, 0.5
    noise = jax.random.normal(jax.random.key(0), (20_000, 1))
    x = samplers.sample(gaussian_data_velocity(mu, s), noise, num_steps=100, solver=solver,
                        rng=jax.random.key(1), **kwargs)
    x = np.asarray(x)
    assert abs(x.mean() - mu) < 0.02 and abs(x.std() - s) < 0.02


def test_unknown_solver_names_the_config_key():
    with pytest.raises(ValueError, match="config.sample.solver"):
        samplers.sample(linear_field, X0, num_steps=2, solver="dpm")
