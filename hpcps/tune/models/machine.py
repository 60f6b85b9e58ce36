"""The machine model: how long a worker's step of k samples with t threads takes on a node of each type.

Per node type j a parametric form

    compute(k, t) = c0_j + (a_j * A(qa_j, s) + b_j * k * A(qb_j, s)) * P
    s = t * min(1, cores / T)                  cores the worker gets (T: threads all workers on the node ask for)
    A(q, s) = (1 - q) / min(1, s) + q / s      Amdahl's law, and time-sharing below one core
    P = 1 + o_j * max(0, T / cores - 1)        the cost of more threads than cores (the knee)

c0 is what threads do not speed up (a device's launch and copy cost), a the threaded fixed cost, b the
cost per sample, q the parallel fractions, o the oversubscription cost. The constants are inferred by
nonlinear least squares on log times, with weak priors: a and b follow the cluster file's speed
(a_j = a / speed_j * exp(d_j), d_j ~ N(0, 0.7)), so a type never seen starts from the seen types scaled
by speed; c0 starts at fixed_ms; q and o at the workload's calibrated thread scaling where there is one
(hpcps.sim's profile: how its steps scaled with threads, and slowed past the cores, on the calibration
machine), else q at one half and o at 1 (threads past the cores are costly: busy-waiting threads fight
for cores). The first trials rarely oversubscribe a node, so without the calibration a tuner's model
would charge 16 threads on 8 cores about half of what they cost. A Gaussian process per type models what the
form leaves unexplained, in log time over (log k, threads per core, T / cores); beyond that every
configuration is taken to lie off the form by CONFIG_SD, a quirk of its own that repeats cannot average
away. Posterior samples of the constants come from the Laplace approximation around the fit.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares

from hpcps.cluster.description import Cluster
from hpcps.tune.models.posterior import fit_residual_gp, laplace_cov, laplace_samples, signal_sd

PER_TYPE = ("log_c0", "d_a", "d_b", "logit_qa", "logit_qb", "log_o")
N_GLOBAL = 2                         # log a, log b at speed 1.0
MIN_GP_ROWS = 6
SAMPLE_JITTER = 1e-10                # on the covariance's diagonal when drawing constants
# How far (log sd) one configuration's step time lies off any smooth form in batch size and threads, however
# often it is repeated: kernels chosen per shape on a real device, and on an emulated or testbed node the
# reference timing of each batch size (the step-cost files of a testbed sitting, hpcps/emulate/step_costs.py:
# log sd 0.09 and 0.13 of 22 and 25 batch sizes of cifar-resnet around a fitted fixed + per-sample cost;
# the same batch size timed in four fresh processes here ranged 1.4x). Part of the fit's weights and of
# every prediction's spread.
CONFIG_SD = 0.1


def _amdahl(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    return (1.0 - q) / np.minimum(1.0, s) + q / s


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class MachineModel:
    PRIOR_SD_GLOBAL = 5.0
    PRIOR_SD_SPEED = 0.7
    PRIOR_SD_C0 = 1.0
    PRIOR_SD_Q = 1.5
    PRIOR_O, PRIOR_SD_O = 1.0, 1.5
    PRIOR_SD_CALIBRATED = 0.5        # q (logit) and o (log) where the workload's calibration gives them

    def __init__(self, cluster: Cluster, thread_scaling: tuple[float, float, float] | None = None):
        """thread_scaling: the workload's calibrated (fixed parallel fraction, per-sample parallel fraction,
        oversubscription cost) as the prior's centre (hpcps.tune.problem.Problem.thread_scaling)."""
        self.cluster = cluster
        self.types = cluster.types
        J = len(self.types)
        self.speed = np.array([t.speed for t in self.types])
        self.cores = np.array([t.cores for t in self.types], dtype=float)
        fixed = np.array([t.fixed_ms * 1e-3 for t in self.types])
        mean = np.zeros(N_GLOBAL + len(PER_TYPE) * J)
        sd = np.zeros_like(mean)
        # A step of a small model on the calibration machine: 0.1 ms fixed, 0.1 ms a sample. The data
        # overrides these at once (sd 5 in log space).
        mean[:N_GLOBAL] = [math.log(1e-4), math.log(1e-4)]
        sd[:N_GLOBAL] = self.PRIOR_SD_GLOBAL
        per = mean[N_GLOBAL:].reshape(J, len(PER_TYPE))
        per_sd = sd[N_GLOBAL:].reshape(J, len(PER_TYPE))
        per[:, 0] = np.log(np.maximum(fixed, 1e-6))
        per_sd[:, 0] = np.where(fixed > 0, self.PRIOR_SD_C0, 2.0)
        per_sd[:, 1] = per_sd[:, 2] = self.PRIOR_SD_SPEED
        per_sd[:, 3] = per_sd[:, 4] = self.PRIOR_SD_Q
        per[:, 5] = math.log(self.PRIOR_O)
        per_sd[:, 5] = self.PRIOR_SD_O
        if thread_scaling is not None:
            qa, qb, o = thread_scaling
            logit = lambda q: math.log(q / (1.0 - q))       # noqa: E731
            per[:, 3] = logit(min(max(qa, 0.01), 0.99))
            per[:, 4] = logit(min(max(qb, 0.01), 0.99))
            per[:, 5] = math.log(max(o, 0.05))
            per_sd[:, 3] = per_sd[:, 4] = self.PRIOR_SD_CALIBRATED
            per_sd[:, 5] = self.PRIOR_SD_CALIBRATED
        self.prior_mean, self.prior_sd = mean, sd
        self.theta = mean.copy()
        self.cov = np.diag(sd ** 2)
        self.noise_sd = 0.1
        self.gps: dict[int, Any] = {}           # sklearn GaussianProcessRegressor per type
        self.gp_sd: dict[int, float] = {}
        self.seen = np.zeros(J, dtype=bool)

    # -- the parametric form ------------------------------------------------------------------------

    def constants(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """theta (S, P) -> per type constants, each (S, J)."""
        theta = np.atleast_2d(theta)
        J = len(self.types)
        per = theta[:, N_GLOBAL:].reshape(len(theta), J, len(PER_TYPE))
        return {"c0": np.exp(per[:, :, 0]),
                "a": np.exp(theta[:, [0]] + per[:, :, 1]) / self.speed,
                "b": np.exp(theta[:, [1]] + per[:, :, 2]) / self.speed,
                "qa": _sigmoid(per[:, :, 3]), "qb": _sigmoid(per[:, :, 4]), "o": np.exp(per[:, :, 5])}

    def form(self, theta: np.ndarray, type_idx: npt.ArrayLike, k: npt.ArrayLike, t: npt.ArrayLike,
             node_threads: np.ndarray) -> np.ndarray:
        """Seconds of one step under the parametric form: (S,) + the broadcast shape of the inputs."""
        c = self.constants(theta)
        type_idx = np.asarray(type_idx)
        shape = np.broadcast_shapes(type_idx.shape, np.shape(k), np.shape(t), np.shape(node_threads))
        ti = np.broadcast_to(type_idx, shape).reshape(-1)
        k = np.broadcast_to(np.asarray(k, float), shape).reshape(-1)
        t = np.maximum(np.broadcast_to(np.asarray(t, float), shape).reshape(-1), 1.0)
        T = np.maximum(np.broadcast_to(np.asarray(node_threads, float), shape).reshape(-1), t)
        cores = self.cores[ti]
        s = t * np.minimum(1.0, cores / T)
        over = 1.0 + c["o"][:, ti] * np.maximum(0.0, T / cores - 1.0)
        out = c["c0"][:, ti] + (c["a"][:, ti] * _amdahl(c["qa"][:, ti], s)
                                + c["b"][:, ti] * k * _amdahl(c["qb"][:, ti], s)) * over
        return out.reshape((len(out),) + shape)

    # -- fitting ------------------------------------------------------------------------------------

    def fit(self, obs: np.ndarray) -> None:
        """Fit to worker rows of observations (hpcps.tune.observations), all iterations of all trials."""
        rows = _group(obs)
        if rows is None:
            return
        ti, k, t, T, mean_log, count, var_log = rows
        self.seen = np.zeros(len(self.types), dtype=bool)
        self.seen[np.unique(ti)] = True
        # Noise of one observation, from repeats of the same configuration.
        rep = count > 1
        pooled = (np.sum(var_log[rep] * (count[rep] - 1)) / max(1, np.sum(count[rep] - 1))) if rep.any() else 0.01
        self.noise_sd = float(np.clip(math.sqrt(max(pooled, 0.0)), 0.01, 1.0))
        # A configuration's mean is off the form by its step noise over the repeats and by what the form
        # cannot follow (CONFIG_SD): weighting by the step noise alone, the fit bent every constant to
        # pass through a few configurations' quirks.
        sd_config = np.sqrt(self.noise_sd ** 2 / count + CONFIG_SD ** 2)

        def residuals(theta):
            pred = self.form(theta, ti, k, t, T)[0]
            r = (mean_log - np.log(np.maximum(pred, 1e-12))) / sd_config
            return np.concatenate([r, (theta - self.prior_mean) / self.prior_sd])

        theta0 = self.prior_mean.copy()
        # Start the global constants near the data: per-sample cost from the largest batches.
        big = k >= np.median(k)
        guess = np.exp(mean_log[big]) * self.speed[ti[big]] / np.maximum(k[big], 1.0)
        theta0[1] = math.log(max(float(np.median(guess)) * 0.7, 1e-9))
        theta0[0] = math.log(max(float(np.median(np.exp(mean_log) * self.speed[ti])) * 0.1, 1e-9))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            best = least_squares(residuals, theta0, method="trf", max_nfev=400)
        self.theta = best.x
        self.cov = laplace_cov(best.jac)
        self._fit_gps(ti, k, t, T, mean_log, count)

    def _fit_gps(self, ti, k, t, T, mean_log, count) -> None:
        resid = mean_log - np.log(self.form(self.theta, ti, k, t, T)[0])
        self.gps, self.gp_sd = {}, {}
        for j in np.unique(ti):
            sel = ti == j
            if sel.sum() < MIN_GP_ROWS:
                continue
            gp = fit_residual_gp(self._features(j, k[sel], t[sel], T[sel]), resid[sel], max_lengthscale=20.0,
                                 white=1e-4, alpha=self.noise_sd ** 2 / count[sel] + CONFIG_SD ** 2)
            self.gps[int(j)] = gp
            self.gp_sd[int(j)] = signal_sd(gp)

    def _features(self, j, k, t, T) -> np.ndarray:
        cores = self.cores[j]
        return np.column_stack([np.log1p(np.asarray(k, float)), np.asarray(t, float) / cores,
                                np.asarray(T, float) / cores])

    # -- prediction ---------------------------------------------------------------------------------

    def samples(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, P) draws of the constants from the Laplace posterior; the first is the fit itself."""
        return laplace_samples(self.theta, self.cov, n, rng, SAMPLE_JITTER)

    def linearized(self, theta: np.ndarray, type_idx, k, t, node_threads) -> np.ndarray:
        """Seconds of one step, (S,) + input shape, for constants theta (S, P) drawn around the fit, with
        the log time linearised in the constants at the fit: log f(theta_s) = log f(fit) + g . (theta_s -
        fit). Plain draws pushed through the form wander off the curved ridges the data leave (a
        parallel fraction against the costs it scales) and predict times the data rule out; the linear
        push-forward keeps the spread the data allow (the linearised Laplace predictive)."""
        theta = np.atleast_2d(theta)
        P = len(self.theta)
        eps = 1e-4
        at = np.vstack([self.theta[None, :], self.theta[None, :] + eps * np.eye(P)])
        with np.errstate(divide="ignore"):
            logs = np.log(np.maximum(self.form(at, type_idx, k, t, node_threads), 1e-300))
        grad = (logs[1:] - logs[:1]) / eps                                    # (P,) + shape
        delta = theta - self.theta[None, :]                                   # (S, P)
        return np.exp(logs[0][None] + np.tensordot(delta, grad, axes=(1, 0)))

    def residual(self, type_idx: np.ndarray, k: np.ndarray, t: np.ndarray, node_threads: np.ndarray):
        """(mean, sd) of a worker's log-time residual from the form, each of the broadcast input shape:
        the GP's mean (0 for a type without one), and its spread with CONFIG_SD's."""
        shape = np.broadcast_shapes(np.shape(type_idx), np.shape(k), np.shape(t), np.shape(node_threads))
        ti = np.broadcast_to(type_idx, shape).reshape(-1)
        k = np.broadcast_to(k, shape).reshape(-1)
        t = np.broadcast_to(t, shape).reshape(-1)
        T = np.maximum(np.broadcast_to(node_threads, shape).reshape(-1), t)
        mu, sd = np.zeros(ti.size), np.zeros(ti.size)
        work = k > 0
        if self.gps:
            # Candidates share most of their nodes' settings: predict each distinct one once.
            key = np.column_stack([ti, np.rint(np.maximum(k, 1.0)), t, T])
            uniq, inv = np.unique(key, axis=0, return_inverse=True)
            inv = inv.reshape(-1)
            umu, usd = np.zeros(len(uniq)), np.zeros(len(uniq))
            for j, gp in self.gps.items():
                sel = uniq[:, 0] == j
                if sel.any():
                    u = uniq[sel]
                    # The GP's spread is taken as its typical spread on the data (a constant per type):
                    # predicting it per point costs a triangular solve per candidate.
                    umu[sel] = gp.predict(self._features(j, u[:, 1], u[:, 2], u[:, 3]))
                    usd[sel] = self.gp_sd[j]
            mu[work], sd[work] = umu[inv[work]], usd[inv[work]]
        sd[work] = np.sqrt(sd[work] ** 2 + CONFIG_SD ** 2)
        return mu.reshape(shape), sd.reshape(shape)

    def predict(self, theta: np.ndarray, type_idx, k, t, node_threads, z: np.ndarray | None = None) -> np.ndarray:
        """Seconds of one step, (S,) + input shape: the form under each sample of the constants times
        the residual (its mean, plus z[s] standard deviations when z (S,) is given)."""
        base = self.linearized(theta, type_idx, k, t, node_threads)
        mu, sd = self.residual(type_idx, k, t, node_threads)
        if z is None:
            return base * np.exp(mu)[None]
        z = np.asarray(z).reshape((-1,) + (1,) * mu.ndim)
        return base * np.exp(mu[None] + z * sd[None])


def _group(obs: np.ndarray):
    """Worker rows grouped by (type, k, t, T): mean and variance of log compute time, and counts."""
    w = obs[(obs["batch"] > 0) & (obs["compute_s"] > 0)]
    if len(w) == 0:
        return None
    key = np.column_stack([w["type"], w["batch"], w["threads"], np.maximum(w["node_threads"], w["threads"])])
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    logs = np.log(w["compute_s"])
    count = np.bincount(inv).astype(float)
    mean = np.bincount(inv, logs) / count
    var = np.bincount(inv, (logs - mean[inv]) ** 2) / np.maximum(count - 1, 1)
    return (uniq[:, 0].astype(int), uniq[:, 1].astype(float), uniq[:, 2].astype(float), uniq[:, 3].astype(float),
            mean, count, var)
