"""The float64 Fréchet distance against closed forms and a direct scipy computation."""
import numpy as np
import pytest
import scipy.linalg

from stiv_jax.eval.frechet import GaussianStats, frechet_distance, gaussian_stats


def _random_spd(rng, dim):
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_diagonal_gaussians_match_closed_form():
    # For commuting (diagonal) covariances d^2 = |mu1 - mu2|^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    rng = np.random.default_rng(0)
    mu_1, mu_2 = rng.normal(size=16), rng.normal(size=16)
    var_1, var_2 = rng.uniform(0.1, 4, 16), rng.uniform(0.1, 4, 16)
    expected = np.sum((mu_1 - mu_2) ** 2) + np.sum((np.sqrt(var_1) - np.sqrt(var_2)) ** 2)
    got = frechet_distance(GaussianStats(mu_1, np.diag(var_1), 2), GaussianStats(mu_2, np.diag(var_2), 2))
    assert got == pytest.approx(expected, rel=1e-10)


def _scipy_sqrtm_distance(mu_1, cov_1, mu_2, cov_2):
    """The textbook formula with scipy's general matrix square root of the (non-symmetric) product."""
    return (np.sum((mu_1 - mu_2) ** 2) + np.trace(cov_1) + np.trace(cov_2)
            - 2 * np.trace(scipy.linalg.sqrtm(cov_1 @ cov_2).real))


def test_general_gaussians_match_scipy_sqrtm_formula():
    rng = np.random.default_rng(1)
    dim = 32
    mu_1, mu_2 = rng.normal(size=dim), rng.normal(size=dim)
    cov_1, cov_2 = _random_spd(rng, dim), _random_spd(rng, dim)
    direct = _scipy_sqrtm_distance(mu_1, cov_1, mu_2, cov_2)
    got = frechet_distance(GaussianStats(mu_1, cov_1, 2), GaussianStats(mu_2, cov_2, 2))
    assert got == pytest.approx(direct, rel=1e-8)


def test_sampled_features_converge_to_the_true_distance():
    rng = np.random.default_rng(2)
    dim = 8
    mu_1, mu_2 = np.zeros(dim), np.full(dim, 0.5)
    cov_1, cov_2 = _random_spd(rng, dim), _random_spd(rng, dim)
    true = frechet_distance(GaussianStats(mu_1, cov_1, 2), GaussianStats(mu_2, cov_2, 2))
    x = rng.multivariate_normal(mu_1, cov_1, size=200_000).astype(np.float32)  # float32 features, like I3D's
    y = rng.multivariate_normal(mu_2, cov_2, size=200_000).astype(np.float32)
    stats = gaussian_stats(x)
    assert stats.mean.dtype == np.float64 and stats.cov.dtype == np.float64 and stats.count == 200_000
    assert frechet_distance(stats, gaussian_stats(y)) == pytest.approx(true, rel=0.02)


def test_rank_deficient_sets_match_scipy_sqrtm_and_self_distance_is_zero():
    # Fewer samples than dimensions (as with a handful of I3D features): both covariances are singular.
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 48)) * 5, rng.normal(size=(7, 48)) * 3 + 1
    sx, sy = gaussian_stats(x), gaussian_stats(y)
    assert frechet_distance(sx, sy) == pytest.approx(_scipy_sqrtm_distance(sx.mean, sx.cov, sy.mean, sy.cov),
                                                     rel=1e-6)
    assert abs(frechet_distance(sx, sx)) < 1e-9 * np.trace(sx.cov)


def test_too_few_samples_or_mismatched_dimensions_are_named():
    with pytest.raises(ValueError, match="at least 2 samples"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(gaussian_stats(np.eye(3)), gaussian_stats(np.eye(4)))
