"""What the structured model's parts share to describe their uncertainty: the Laplace approximation
around a least-squares fit, and a Gaussian process on what a parametric fit leaves unexplained."""

from __future__ import annotations

import warnings

import numpy as np

RIDGE = 1e-9          # added to J^T J before inverting: directions the data do not constrain stay finite


def laplace_cov(jac: np.ndarray) -> np.ndarray:
    """(P, P) covariance of the constants: (J^T J)^-1 for the Jacobian (n_residuals, P) of residuals
    already scaled by their standard deviations (priors included as residuals)."""
    h = jac.T @ jac
    return np.linalg.pinv(h + RIDGE * np.eye(h.shape[0]))


def latin_normal(n: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """(n, dims) standard normal scores, Latin-hypercube stratified: in every dimension one draw from each
    of n equally likely slices, the slices shuffled per dimension. The structured model predicts from a
    few posterior samples (16) that every candidate shares, and a prediction is mostly a linear
    combination of the draws (the linearised push-forward, machine.py): plain draws leave that
    combination's sample mean a quarter of its spread off, typically, and an oversubscribed schedule's
    predicted time 20-50% off its many-sample value, depending on the seed. Stratifying every dimension
    cancels most of that for any linear combination."""
    from scipy.stats import norm
    strata = rng.permuted(np.tile(np.arange(n), (dims, 1)), axis=1).T           # (n, dims)
    return norm.ppf((strata + rng.random((n, dims))) / n)


def laplace_samples(theta: np.ndarray, cov: np.ndarray, n: int, rng: np.random.Generator,
                    jitter: float) -> np.ndarray:
    """(n, P) draws from N(theta, cov), stratified (latin_normal); the first is theta itself. jitter is
    added to the diagonal so that the Cholesky factor exists for a covariance that is singular in some
    direction."""
    z = np.zeros((n, len(theta)))
    if n > 1:
        z[1:] = latin_normal(n - 1, len(theta), rng)
    chol = np.linalg.cholesky(cov + jitter * np.eye(len(theta)))
    return theta[None, :] + z @ chol.T


def quick_lbfgs(obj_func, initial_theta, bounds):
    """Optimiser for sklearn's GaussianProcessRegressor: L-BFGS-B on the log marginal likelihood with
    few iterations. A proposal refits every GP; a few dozen steps from the default start suffice for
    the handful of kernel parameters here, and the full default search is most of a proposal's time."""
    from scipy.optimize import minimize
    res = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds, options={"maxiter": 30})
    return res.x, res.fun


def fit_residual_gp(X: np.ndarray, y: np.ndarray, *, max_lengthscale: float, white: float,
                    alpha: float | np.ndarray = 1e-10, min_white: float = 1e-6):
    """A GP regression of residuals y (n,) on features X (n, d): a scaled RBF (signal variance from 1e-5
    to 1, starting at 0.01; lengthscales from 0.05 to max_lengthscale) plus white noise (starting at
    `white`, at least min_white: it is part of every prediction's spread), alpha added to the diagonal
    (a variance per point, or one for all). Returns the fitted sklearn GaussianProcessRegressor."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    kernel = (ConstantKernel(0.01, (1e-5, 1.0)) * RBF(np.ones(X.shape[1]), (0.05, max_lengthscale))
              + WhiteKernel(max(white, min_white), (min_white, max(1e-1, min_white))))
    gp = GaussianProcessRegressor(kernel, alpha=alpha, normalize_y=False, optimizer=quick_lbfgs, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(X, y)
    return gp


def signal_sd(gp) -> float:
    """The fitted GP's signal standard deviation: its typical spread on the data."""
    return float(np.sqrt(gp.kernel_.k1.k1.constant_value))
