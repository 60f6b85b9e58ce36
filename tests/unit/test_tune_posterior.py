"""hpcps.tune.models.posterior: the Laplace covariance and draws, and the residual GP's set-up."""

from __future__ import annotations

import numpy as np
import pytest

from hpcps.tune.models.posterior import (
    RIDGE,
    fit_residual_gp,
    laplace_cov,
    laplace_samples,
    latin_normal,
    quick_lbfgs,
    signal_sd,
)


def test_laplace_cov_inverts_the_gauss_newton_hessian():
    jac = np.array([[2.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(laplace_cov(jac), np.diag([1 / (4 + RIDGE), 1 / (16 + RIDGE)]), rtol=1e-12)
    assert RIDGE == 1e-9
    flat = np.array([[1.0, 0.0]])                 # the second constant unconstrained: stays finite
    cov = laplace_cov(flat)
    assert cov[1, 1] == pytest.approx(1 / RIDGE) and cov[0, 0] == pytest.approx(1.0, rel=1e-6)
    mixed = np.array([[1.0, 1.0], [1.0, -1.0], [0.0, 2.0]])
    np.testing.assert_allclose(laplace_cov(mixed), np.linalg.inv(mixed.T @ mixed), rtol=1e-6)


def test_laplace_samples_start_at_the_fit_and_spread_as_the_covariance():
    theta = np.array([1.0, -2.0])
    cov = np.array([[0.5, 0.2], [0.2, 0.3]])
    draws = laplace_samples(theta, cov, 40000, np.random.default_rng(1), 0.0)
    assert draws.shape == (40000, 2)
    np.testing.assert_array_equal(draws[0], theta)
    np.testing.assert_allclose(draws.mean(0), theta, atol=0.02)
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.02)
    # a singular covariance draws with the jitter on its diagonal
    singular = np.array([[1.0, 1.0], [1.0, 1.0]])
    d = laplace_samples(theta, singular, 5, np.random.default_rng(2), 1e-12)
    np.testing.assert_allclose(d[:, 0] - d[:, 1], 3.0, atol=1e-4)
    with pytest.raises(np.linalg.LinAlgError):
        laplace_samples(theta, singular, 5, np.random.default_rng(2), 0.0)


def test_draws_are_stratified_in_every_dimension():
    """latin_normal: in each dimension one draw from each of n equally likely slices of the normal."""
    from scipy.stats import norm
    z = latin_normal(15, 20, np.random.default_rng(3))
    slices = np.floor(norm.cdf(z) * 15).astype(int)
    for d in range(20):
        assert sorted(slices[:, d]) == list(range(15))
    # the columns are shuffled independently (not the same order in every dimension)
    assert len({tuple(slices[:, d]) for d in range(20)}) == 20
    # so a linear combination of 15 draws averages close to its mean: over 200 seeds, its sample mean
    # spreads far less than the 1/sqrt(15) of plain draws
    g = np.random.default_rng(4).standard_normal(20)
    g /= np.linalg.norm(g)
    means = [float((laplace_samples(np.zeros(20), np.eye(20), 16, np.random.default_rng(s), 0.0)[1:] @ g).mean())
             for s in range(200)]
    assert np.std(means) < 0.3 / np.sqrt(15)


def test_quick_lbfgs_minimises_within_the_bounds():
    def f(x):
        return float(((x - 3.0) ** 2).sum()), 2 * (x - 3.0)
    x, fun = quick_lbfgs(f, np.array([0.0, 0.0]), [(-1.0, 10.0), (-1.0, 2.0)])
    np.testing.assert_allclose(x, [3.0, 2.0], atol=1e-6)
    assert fun == pytest.approx(1.0, abs=1e-9)


def test_the_residual_gp_starts_where_the_docstring_says():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (12, 2))
    y = 0.1 * np.sin(3 * X[:, 0])
    gp = fit_residual_gp(X, y, max_lengthscale=7.0, white=1e-3, alpha=1e-4)
    k = gp.kernel                                  # the kernel as given, before the fit
    assert k.k1.k1.constant_value == 0.01 and tuple(k.k1.k1.constant_value_bounds) == (1e-5, 1.0)
    np.testing.assert_array_equal(k.k1.k2.length_scale, [1.0, 1.0])
    assert tuple(k.k1.k2.length_scale_bounds) == (0.05, 7.0)
    assert k.k2.noise_level == 1e-3 and tuple(k.k2.noise_level_bounds) == (1e-6, 1e-1)
    assert gp.alpha == 1e-4 and gp.optimizer is quick_lbfgs and gp.normalize_y is False
    assert gp.random_state == 0
    assert signal_sd(gp) == pytest.approx(np.sqrt(gp.kernel_.k1.k1.constant_value))
    assert 1e-5 ** 0.5 - 1e-9 <= signal_sd(gp) <= 1.0
    # it learned y: in-sample error well under y's spread
    assert np.abs(gp.predict(X) - y).max() < 0.5 * y.std()


def test_quick_lbfgs_stops_after_30_iterations():
    calls = []

    def rosenbrock(x):
        calls.append(1)
        f = float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))
        g = np.zeros_like(x)
        g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200 * (x[1:] - x[:-1] ** 2)
        return f, g
    # 50-d Rosenbrock from -1.5: L-BFGS-B needs 47 iterations to converge (to 4e-10)
    x, fun = quick_lbfgs(rosenbrock, np.full(50, -1.5), [(-5.0, 5.0)] * 50)
    assert fun > 1e-3                     # short of the minimum (0 at all ones) when it stops
    assert len(calls) < 50
