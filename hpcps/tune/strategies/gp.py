"""The plain Bayesian-optimisation baseline: Emukit's Gaussian process (GPyModelWrapper around a GPy
regression with a Matern 5/2 kernel) straight over the encoded space, on log iteration time, with
expected improvement maximised by Emukit's local search for mixed spaces.

Inputs are scaled to [0, 1] per dimension (threads run to 2 x cores, a codec index to the number of
codecs less one, the sync index to the number of syncs less one, the rest already lie in [0, 1]).
The first trials are the naive schedule and INITIAL - 1 random points.
"""

from __future__ import annotations

import warnings

import numpy as np
from emukit.bayesian_optimization.acquisitions import ExpectedImprovement
from emukit.core.interfaces import IModel
from emukit.core.loop import SequentialPointCalculator
from emukit.core.loop.loop_state import create_loop_state
from emukit.core.optimization import LocalSearchAcquisitionOptimizer

from hpcps.tune.strategies.base import Strategy
from hpcps.tune.trials import Proposal, TrialRecord

INITIAL = 3


class ScaledInputs(IModel):
    """An Emukit IModel that scales inputs, (n_points, n_dims), by `scale` (n_dims,) before the wrapped
    model sees them."""

    def __init__(self, inner: IModel, scale: np.ndarray):
        self.inner = inner
        self.scale = scale

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.predict(np.atleast_2d(X) / self.scale)

    def set_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        self.inner.set_data(np.atleast_2d(X) / self.scale, Y)

    def optimize(self) -> None:
        self.inner.optimize()

    @property
    def X(self) -> np.ndarray:
        return self.inner.X * self.scale

    @property
    def Y(self) -> np.ndarray:
        return self.inner.Y


class GPStrategy(Strategy):
    name = "gp"

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        if not history:
            return Proposal(self.naive_point(), note="naive")
        ok = [r for r in history if r.ok]
        if len(history) < INITIAL or len(ok) < 2:
            return Proposal(self.fresh(self.space.random_points(1, rng)[0], history, rng), note="initial design")
        import GPy  # slow to import: only when a GP is fitted
        from emukit.model_wrappers import GPyModelWrapper

        # GPy and Emukit's local search draw from NumPy's global generator: seed it per proposal.
        np.random.seed(int(rng.integers(2 ** 31)))
        X = np.array([r.point for r in ok])
        Y = np.log([[r.time_s] for r in ok])
        scale = np.ones(self.space.n_dims)
        F = self.space.n_fields
        for i, node in enumerate(self.problem.cluster.nodes):
            scale[F * i + 3] = 2 * node.type.cores
            if self.space.tunes_codecs:
                scale[F * i + 4] = len(self.space.codecs) - 1
        if self.space.tunes_syncs:
            scale[-1] = len(self.space.syncs) - 1
        kernel = GPy.kern.Matern52(self.space.n_dims, variance=1.0, lengthscale=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gpy = GPy.models.GPRegression(X / scale, Y - Y.mean(), kernel, noise_var=1e-3)
            gpy.Gaussian_noise.variance.constrain_bounded(1e-6, 1.0, warning=False)
            model = ScaledInputs(GPyModelWrapper(gpy, n_restarts=2), scale)
            model.set_data(X, Y - Y.mean())
            model.optimize()
            acquisition = ExpectedImprovement(model)
            optimizer = LocalSearchAcquisitionOptimizer(self.space.parameter_space(), num_steps=10,
                                                        num_init_points=8)
            calc = SequentialPointCalculator(acquisition, optimizer)
            x = calc.compute_next_points(create_loop_state(X, Y - Y.mean()))[0]
            p = self.fresh(x, history, rng)
            mean, var = model.predict(p[None])
        m, s = float(mean[0, 0] + Y.mean()), float(np.sqrt(max(var[0, 0], 0.0)))
        return Proposal(p, float(np.exp(m + s * s / 2)), float(np.exp(m) * s), note="gp expected improvement")
