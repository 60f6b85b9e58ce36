"""The structured model of iteration time, after BOAT: machine models per node type and a network model,
composed into the time of one iteration (a global batch), wrapped as an Emukit IModel.

    predict(X)  X (n_points, n_dims) encoded schedules -> mean, variance of iteration seconds, (n_points, 1)

For each posterior sample of the constants (Laplace, see machine.py and network.py) every node's step
time and NIC are predicted and composed (network.iteration_times): the slowest worker's pull, compute
and push, with server contention, then the last server's update. Servers' update times are linear in
bytes and workers (fitted). Each worker's push codec sets its push bytes and adds its calibrated encode
and decode times (codecs.py); the machine and update fits see the measured times less those. Under ssp
and asp (the job's training.sync, or the schedule's sync where the run tunes it) the same node times are
composed into the time of a global batch with each worker at its own pace (stale.py); the network is
fitted to the trials run under bsp only (their pull and push windows are what iteration_times
composes; with none, the cluster file's NICs stand), the update cost to bsp and ssp trials. What the
composition still misses on whole trials is a Gaussian process over a few summary features of the
schedule, on the log of measured / composed time. Every rank and iteration of every trial is a data
point for the constants; only the correction works per trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar, cast

import numpy as np
from emukit.core.interfaces import IModel

from hpcps.tune.models.codecs import CodecModel
from hpcps.tune.models.machine import MachineModel
from hpcps.tune.models.network import Exchange, NetworkModel, iteration_times
from hpcps.tune.models.posterior import fit_residual_gp, latin_normal
from hpcps.tune.models.stale import stale_iteration_times
from hpcps.tune.problem import Problem
from hpcps.tune.space import DecodedBatch, decode_many

CHUNK_ELEMENTS = 4e6             # candidates are scored in chunks of about this many (sample, server, node) cells
PRIOR_CORRECTION_SD = 0.15        # how far off the composition may be before any trial says so
# How much one trial's time differs from another's of the same schedule (log seconds): a real run times
# its steps afresh, MPI and the machine vary. The same schedule measured five times on the testbed in
# rotating rounds: median sd 0.063 over 22 schedules (results/tune_testbed.json). Part of every
# prediction's spread, however close the trials seen.
TRIAL_NOISE_SD = 0.06
# What a schedule that cannot run (its workers' memory cannot hold the global batch) is predicted to take:
INFEASIBLE_S = 1e9               # seconds: far slower than anything that runs, finite for Emukit's arithmetic
INFEASIBLE_LOG_S = 30.0          # log seconds (about 1e13 s)
MIN_VARIANCE_S2 = 1e-18          # floor of the predicted variance of seconds (expected improvement divides by it)
MIN_VARIANCE_LOG = 1e-12         # floor of the predicted variance of log seconds

T = TypeVar("T")


class AggregateModel:
    """Server update seconds = (shard bytes * (alpha * workers + beta) + gamma) / speed, fitted by
    non-negative least squares. gamma is what one aggregation costs whatever its size (a call into
    torch, the checks, the optimiser's step: 0.6-0.9 ms here for a server that waited asleep,
    results/aggregate_cost.md); without it, smaller shards on more servers looked nearly free."""

    def __init__(self, cluster):
        self.speed = np.array([n.type.speed for n in cluster.nodes])
        self.coef = np.array([1.5e-10, 5e-11, 0.0])    # a NumPy weighted sum, an SGD step per byte; no fixed part

    def fit(self, rows: list[tuple[float, int, int, float]]) -> None:
        """rows: (shard bytes, workers, node index, measured seconds)."""
        if len(rows) < 2:
            return
        r = np.array(rows, dtype=float)
        A = np.column_stack([r[:, 0] * r[:, 1], r[:, 0], np.ones(len(r))]) / self.speed[r[:, 2].astype(int)][:, None]
        scale = np.linalg.norm(A, axis=0)          # columns of bytes and of ones differ by a millionfold
        scale[scale == 0] = 1.0
        from scipy.optimize import nnls
        coef, _ = nnls(A / scale, r[:, 3])
        coef = coef / scale
        if np.all(np.isfinite(coef)) and coef.sum() > 0:
            self.coef = coef

    def predict(self, shard_bytes: np.ndarray, workers: np.ndarray) -> np.ndarray:
        """(n, N) seconds for each node as a server."""
        return (shard_bytes[:, None] * (self.coef[0] * workers[:, None] + self.coef[1]) + self.coef[2]) \
            / self.speed[None, :]


class LogTime(IModel):
    """The structured model seen in log seconds, as an Emukit IModel: expected improvement on log time
    weighs a 10% gain the same on a fast schedule as on a slow one, and does not chase the wide absolute
    spread of schedules predicted to be many times slower than the best."""

    def __init__(self, model: StructuredModel):
        self.model = model

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.model.predict_log(X)

    def set_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        self.model.set_data(X, np.exp(Y))

    def optimize(self) -> None:
        self.model.optimize()

    @property
    def X(self) -> np.ndarray:
        return self.model.X

    @property
    def Y(self) -> np.ndarray:
        return np.log(self.model.Y)


class StructuredModel(IModel):
    """Emukit IModel of iteration time from the machine and network models. Give it every trial's
    observations with set_observations() before optimize()."""

    def __init__(self, problem: Problem, n_samples: int = 16, seed: int = 0):
        self.problem = problem
        self.space = problem.space
        cl = problem.cluster
        self.type_of_node = np.array([[t.name for t in cl.types].index(n.type.name) for n in cl.nodes])
        self.machine = MachineModel(cl, problem.thread_scaling)
        self.network = NetworkModel(cl)
        self.aggregate = AggregateModel(cl)
        self.codecs = CodecModel(problem)
        # Per allowed synchronisation: (mode, staleness) as composed, ssp0 as bsp (its timeline).
        from hpcps.config.job import parse_sync_name
        self.sync_modes = [parse_sync_name(name, allow_ssp0=True) for name in problem.syncs]
        self.sync_modes = [("bsp", 0) if mode == ("ssp", 0) else mode for mode in self.sync_modes]
        self.n_samples = n_samples
        self.seed = seed
        self._X = np.zeros((0, self.space.n_dims))
        self._Y = np.zeros((0, 1))
        self._trials: list[tuple[np.ndarray, np.ndarray]] = []     # (point, observations)
        self._draws: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._noise = np.zeros((n_samples, 1, len(problem.cluster)))
        self._iterations = 1
        self._corr = None
        self._corr_mean = 0.0
        self._corr_sd = PRIOR_CORRECTION_SD

    # -- IModel -------------------------------------------------------------------------------------

    @property
    def X(self) -> np.ndarray:
        return self._X

    @property
    def Y(self) -> np.ndarray:
        return self._Y

    def set_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        """X (n_points, n_dims) schedules measured, Y (n_points, 1) their iteration seconds."""
        X, Y = np.atleast_2d(X), np.asarray(Y, dtype=float).reshape(-1, 1)
        if X.shape[0] != Y.shape[0] or X.shape[1] != self.space.n_dims:
            raise ValueError(f"X must be (n_points, {self.space.n_dims}) and Y (n_points, 1); "
                             f"got {X.shape} and {Y.shape}")
        self._X, self._Y = X, Y

    def set_observations(self, trials: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Per trial that ran (ok or not): (point (n_dims,), observations rows or None)."""
        self._trials = [(np.asarray(p, float), o) for p, o in trials if o is not None and len(o)]

    def optimize(self) -> None:
        """Fit the constants to every observation, then the correction to the measured trials."""
        obs = [o for _, o in self._trials]
        if obs:
            decoded = [decode_many(self.space, p[None]) for p, _ in self._trials]
            if self.codecs.has_costs:
                obs = [self._less_codec_costs(d, o) for d, (_, o) in zip(decoded, self._trials)]
            all_obs = np.concatenate(obs)
            self.machine.fit(all_obs)
            net_trials, agg_rows = [], []
            for d, (_, measured), o in zip(decoded, self._trials, obs):
                mode = self.sync_modes[int(d.syncs[0])][0]
                push = self.codecs.push_bytes(d)
                if mode == "bsp":
                    net_trials.append((d.servers[0], d.workers[0], measured)
                                      + ((push[0],) if push is not None else ()))
                if mode == "asp":          # each push applied on its own: not a round's aggregation
                    continue
                m = int(d.servers[0].sum())
                w = int(d.workers[0].sum())
                for row in o[o["server"] & (o["aggregate_s"] > 0)]:
                    agg_rows.append((self.problem.model_bytes / m, w, int(row["node"]), float(row["aggregate_s"])))
            self.network.fit(net_trials, self.problem.pull_bytes)
            self.aggregate.fit(agg_rows)
        rng = np.random.default_rng(self.seed)
        self._draws = (self.machine.samples(self.n_samples, rng), self.network.samples(self.n_samples, rng),
                       rng.standard_normal(self.n_samples))
        self._draws[2][0] = 0.0
        # One draw of step-to-step noise per sample and node, the same for every candidate (common random
        # numbers), and how many iterations a trial's time averages over.
        # Stratified per node (posterior.latin_normal): with 16 plain draws a node's mean noise is often a
        # third of a standard deviation off, which shows as a percent or two on a balanced schedule.
        self._noise = latin_normal(self.n_samples, len(self.problem.cluster), rng)[:, None, :]
        its = [len(np.unique(o["iteration"])) for _, o in self._trials]
        self._iterations = max(1, int(np.median(its))) if its else 1
        self._fit_correction()

    def _less_codec_costs(self, d: DecodedBatch, obs: np.ndarray) -> np.ndarray:
        """A trial's observations with the modelled encode time taken off each worker's step and the
        decode time off each server's update (what the machine and update models fit), kept positive."""
        out = obs.copy()
        enc, dec = self.codecs.encode_s(d)[0], self.codecs.decode_s(d)[0]
        for field, rows, cost in (("compute_s", out["batch"] > 0, enc),
                                  ("aggregate_s", out["server"] & (out["aggregate_s"] > 0), dec)):
            t = out[field][rows]
            out[field][rows] = np.maximum(t - cost[out["node"][rows]], 0.05 * t)
        return out

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of iteration seconds, each (n_points, 1), for X (n_points, n_dims)."""
        parts = self._by_chunk(X, self.n_samples, self._moments)
        return _joined([m for m, _ in parts])[:, None], _joined([v for _, v in parts])[:, None]

    # -- beyond IModel ------------------------------------------------------------------------------

    @property
    def iterations(self) -> int:
        """Iterations a trial's time averages over (from the observations)."""
        return self._iterations

    def predict_log(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of log iteration seconds, each (n_points, 1), for X (n_points, n_dims)."""
        parts = self._by_chunk(X, self.n_samples, self._log_moments)
        mean = _joined([m for m, _ in parts])
        var = _joined([v for _, v in parts])
        return mean[:, None], np.maximum(var, MIN_VARIANCE_LOG)[:, None]

    def predict_mean(self, X: np.ndarray) -> np.ndarray:
        """(n_points,) the composition under the fitted constants with the correction, without the excess
        of noisy steps (a few percent): fast screening."""
        def mean(chunk: np.ndarray) -> np.ndarray:
            base, feats = self._compose(chunk, samples=1)
            mu, _ = self._correction(feats)
            return base[0] * np.exp(mu)
        return _joined(self._by_chunk(X, 1, mean))

    def compose_parts(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """Per node under the fitted constants: compute, pull, push seconds and the iteration, for reports."""
        def parts(chunk: np.ndarray) -> tuple[np.ndarray, ...]:
            d = decode_many(self.space, chunk)
            comp, bw, lat, agg = self._node_times(d, samples=1)
            ex = iteration_times(d.servers, d.workers, comp, bw, lat, agg, self.problem.pull_bytes, detail=True,
                                 push_bytes=self.codecs.push_bytes(d))
            assert isinstance(ex, Exchange)
            return comp[0], ex.pull[0], ex.push[0], ex.iteration[0]
        # The detailed composition keeps several arrays per cell: chunks sized as for two samples.
        chunks = self._by_chunk(X, 2, parts)
        return {k: _joined([c[i] for c in chunks]) for i, k in enumerate(("compute", "pull", "push", "iteration"))}

    def _by_chunk(self, X: np.ndarray, samples: int, fn: Callable[[np.ndarray], T]) -> list[T]:
        """fn over consecutive chunks of X's rows, sized for `samples` posterior samples."""
        X = np.atleast_2d(X)
        N = len(self.problem.cluster)
        step = int(max(4, min(1024, CHUNK_ELEMENTS / (samples * N * N))))
        return [fn(X[i:i + step]) for i in range(0, len(X), step)]

    def _node_times(self, d: DecodedBatch, samples: int):
        if self._draws is None:
            self.optimize()
        assert self._draws is not None
        th_m, th_n, z = (a[:samples] for a in self._draws)
        k = d.batches
        t = d.threads
        ti = self.type_of_node[None, :]
        comp = self.machine.predict(th_m, ti, np.maximum(k, 1.0), t, t, z=z)       # (S, n, N)
        comp = np.where(d.workers[None], comp, 0.0)
        bw, lat = self.network.node_params(th_n)
        m = d.servers.sum(1)
        agg = self.aggregate.predict(self.problem.model_bytes / np.maximum(m, 1), d.workers.sum(1))[None]
        if self.codecs.has_costs:
            comp = comp + self.codecs.encode_s(d)[None]
            agg = agg + self.codecs.decode_s(d)[None]
        return comp, bw, lat, agg

    def _compose(self, X: np.ndarray, samples: int, noisy: bool = True):
        """Iteration seconds (samples, n) and summary features. With noisy (and more than one sample),
        the expected time of an iteration whose steps vary as measured: the slowest of several noisy
        workers is slower than the slowest of their means, more so the more workers finish together.
        That excess is averaged over the samples; the spread of one iteration shrinks by the square root
        of the iterations a trial averages."""
        d = decode_many(self.space, X)
        comp, bw, lat, agg = self._node_times(d, samples)
        it = self._global_batch_times(d, comp, bw, lat, agg)
        sigma = self.machine.noise_sd
        if noisy and samples > 1 and sigma > 0:
            factor = np.exp(sigma * self._noise[:samples] - sigma ** 2 / 2)
            excess = self._global_batch_times(d, comp * factor, bw, lat, agg) - it
            mean_excess = excess.mean(0, keepdims=True)
            it = it + mean_excess + (excess - mean_excess) / math.sqrt(self._iterations)
        it = np.where(d.feasible[None], it, np.inf)
        return it, self._summary(d, it.mean(0))

    def _global_batch_times(self, d: DecodedBatch, comp: np.ndarray, bw: np.ndarray, lat: np.ndarray,
                            agg: np.ndarray) -> np.ndarray:
        """(S, n) seconds of a global batch: the bsp iteration, or where a candidate runs under ssp or
        asp, the stale composition of the same node times."""
        mb = self.problem.pull_bytes
        push = self.codecs.push_bytes(d)
        it = cast(np.ndarray, iteration_times(d.servers, d.workers, comp, bw, lat, agg, mb, push_bytes=push))
        for k, (mode, staleness) in enumerate(self.sync_modes):
            rows = d.syncs == k
            if mode == "bsp" or not rows.any():
                continue
            sub = DecodedBatch(d.servers[rows], d.batches[rows], d.threads[rows], d.feasible[rows],
                               d.codecs[rows], d.syncs[rows])
            it[:, rows] = stale_iteration_times(
                mode, staleness, sub.servers, sub.workers, comp[:, rows], bw, lat, agg[:, rows],
                self._apply_one(sub)[None], mb, sub.batches, push[rows] if push is not None else None)
        return it

    def _apply_one(self, d: DecodedBatch) -> np.ndarray:
        """(n, N) seconds a server spends applying one worker's push of its shard under asp: the update
        model's cost with one worker, and one push's share of the decoding."""
        m = np.maximum(d.servers.sum(1), 1)
        one = self.aggregate.predict(self.problem.model_bytes / m, np.ones(len(m)))
        if self.codecs.has_costs:
            one = one + self.codecs.decode_s(d) / np.maximum(d.workers.sum(1, keepdims=True), 1)
        return np.where(d.servers, one, 0.0)

    def _summary(self, d: DecodedBatch, base: np.ndarray) -> np.ndarray:
        N = len(self.problem.cluster)
        features = [np.log(np.maximum(base, 1e-9)), d.servers.sum(1) / N, d.workers.sum(1) / N]
        if self.space.tunes_syncs:          # the composition may miss differently under each
            features.append(d.syncs / (len(self.space.syncs) - 1))
        return np.column_stack(features)

    def _moments(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) mean and variance of seconds over the samples, the correction applied (log-normal)."""
        it, feats = self._compose(X, samples=self.n_samples)
        mu, sd = self._correction(feats)
        with np.errstate(over="ignore", invalid="ignore"):
            m1 = it.mean(0)
            m2 = (it ** 2).mean(0)
            mean = m1 * np.exp(mu + sd ** 2 / 2)
            var = m2 * np.exp(2 * mu + 2 * sd ** 2) - mean ** 2
        bad = ~np.isfinite(mean)
        mean[bad] = INFEASIBLE_S
        var = np.where(bad | ~np.isfinite(var), MIN_VARIANCE_S2, np.maximum(var, MIN_VARIANCE_S2))
        return mean, var

    def _log_moments(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,) mean and variance of log seconds over the samples, the correction added."""
        it, feats = self._compose(X, samples=self.n_samples)
        mu, sd = self._correction(feats)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(it)
        bad = ~np.isfinite(logs).all(0)
        logs = np.where(np.isfinite(logs), logs, INFEASIBLE_LOG_S)
        return (np.where(bad, INFEASIBLE_LOG_S, logs.mean(0) + mu),
                np.where(bad, MIN_VARIANCE_LOG, logs.var(0) + sd ** 2))

    # -- the correction on whole trials -------------------------------------------------------------

    def _fit_correction(self) -> None:
        self._corr = None
        ok = np.isfinite(self._Y[:, 0]) & (self._Y[:, 0] > 0)
        if not ok.any():
            self._corr_mean, self._corr_sd = 0.0, PRIOR_CORRECTION_SD
            return
        base, feats = self._compose(self._X[ok], samples=self.n_samples)
        r = np.log(self._Y[ok, 0]) - np.log(np.maximum(base.mean(0), 1e-12))
        self._corr_mean = float(np.mean(r))
        if len(r) < 3:
            self._corr_sd = float(math.sqrt(PRIOR_CORRECTION_SD ** 2 / (1 + len(r)) + np.var(r)
                                            + TRIAL_NOISE_SD ** 2))
            return
        self._corr = fit_residual_gp(feats, r - self._corr_mean, max_lengthscale=50.0, white=1e-3,
                                     min_white=TRIAL_NOISE_SD ** 2)

    def _correction(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._corr is None:
            return np.full(len(feats), self._corr_mean), np.full(len(feats), self._corr_sd)
        finite = np.all(np.isfinite(feats), axis=1)
        mu = np.full(len(feats), self._corr_mean)
        sd = np.full(len(feats), PRIOR_CORRECTION_SD)
        if finite.any():
            m, s = self._corr.predict(feats[finite], return_std=True)
            mu[finite] += m
            sd[finite] = s
        return mu, sd


def _joined(chunks: list[np.ndarray]) -> np.ndarray:
    """The chunks' results end to end (no chunks: no points)."""
    return np.concatenate(chunks) if chunks else np.zeros(0)
