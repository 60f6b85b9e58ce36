"""The structured strategy (BOAT): the structured model of hpcps.tune.models.structured as an Emukit
IModel, expected improvement as the acquisition, and an acquisition optimiser for the mixed space.

Trials: the naive schedule first (the baseline, and a measurement of every node at one thread); then
one design point that varies what naive leaves unseen (threads at the node's cores, servers on the
best-connected nodes, batches by the cluster file's speeds); then expected improvement.

The acquisition optimiser scores a pool of candidates and refines the best with Emukit's local search:

- schedules built from the fitted model: for each of many server sets (the k best-connected nodes,
  each node alone, the incumbent's) and worker sets (the k fastest nodes), threads at the model's
  best per node or one, and batches that equalise the predicted pull + compute + push of the workers;
  where the run may choose codecs, each of these with the job's codec on every worker, each other
  allowed codec on every worker, and per worker the codec whose encoding and push over its NIC are
  predicted shortest (on every node, and on the nodes slower than the best-connected only); where the
  run may choose the synchronisation, each of these under each allowed one;
- random points of the space, and random neighbours of the best measured schedules.

The pool is screened with the model's mean (cheap), the best few hundred are scored by expected
improvement under posterior samples, and the best two start a local search: hill climbing over the
one-exchange neighbourhood of Emukit's LocalSearchAcquisitionOptimizer (every other value next to a
discrete parameter's, a few Gaussian draws of a continuous one), or over a sample of random neighbours
on big clusters. The ends of the searches and the best of the pool are then repaired into the
schedules that would run, those already measured are dropped, and the one with the highest expected
improvement wins (when nothing promises an improvement: the one predicted fastest).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from emukit.bayesian_optimization.acquisitions import ExpectedImprovement
from emukit.core import ContinuousParameter, DiscreteParameter, Parameter
from emukit.core.acquisition import Acquisition
from emukit.core.loop import SequentialPointCalculator
from emukit.core.loop.loop_state import create_loop_state
from emukit.core.optimization.acquisition_optimizer import AcquisitionOptimizerBase
from emukit.core.optimization.context_manager import ContextManager

from hpcps.tune.models.structured import LogTime, StructuredModel
from hpcps.tune.space import ScheduleSpace, decode_many, max_threads
from hpcps.tune.strategies.balance import equalise
from hpcps.tune.strategies.base import Strategy, neighbour, schedule_key
from hpcps.tune.trials import Proposal, TrialRecord

SCREEN_TOP = 160
SCREEN_RANDOM = 40
RANDOM_POOL = 800
NEIGHBOURS = 60
LOCAL_STARTS = 2
LOCAL_STEPS = 5
EMUKIT_LOCAL_MAX_NODES = 16      # larger clusters: a sampled neighbourhood (SAMPLED_NEIGHBOURS points a step)
SAMPLED_NEIGHBOURS = 48
CONTINUOUS_NEIGHBOURS = 2        # Gaussian draws per continuous parameter in the one-exchange neighbourhood
CONTINUOUS_SD = 0.02             # their standard deviation, as a fraction of the parameter's range (Emukit's)
TIE = 0.03                       # measured times this close to the best may be noise apart
FINALISTS = 40                   # best pool candidates repaired and scored again with the local searches' ends


class StructuredStrategy(Strategy):
    name = "structured"

    def __init__(self, problem, seed: int = 0):
        super().__init__(problem, seed)
        self._fitted: tuple[tuple, StructuredModel] | None = None

    def forget_fit(self) -> None:
        """Fit the model afresh at the next call (benchmarks time a fit)."""
        self._fitted = None

    def model(self, history: list[TrialRecord]) -> StructuredModel:
        """The structured model fitted to history (remembered for the same history: the loop asks for
        the incumbent after a trial, then for the next proposal)."""
        key = tuple((r.trial, r.status, r.iteration_time_s) for r in history)
        if self._fitted is not None and self._fitted[0] == key:
            return self._fitted[1]
        ok = [r for r in history if r.ok]
        model = StructuredModel(self.problem, seed=self.seed)
        if ok:
            model.set_data(np.array([r.point for r in ok]), np.array([[r.iteration_time_s] for r in ok]))
        model.set_observations([(r.point, r.observations) for r in history])
        model.optimize()
        self._fitted = (key, model)
        return model

    def incumbent(self, history: list[TrialRecord]) -> TrialRecord | None:
        """Among the schedules measured within TIE of the fastest (where noise can reorder them), the one
        whose time is lowest when its measurement and the model's prediction (which has seen every rank
        of every trial) are combined, each weighted by its precision, in log time. A measurement's spread
        is the step-to-step noise the model estimated, averaged over the trial's iterations."""
        ok = [r for r in history if r.ok]
        if len(ok) < 3:
            return super().incumbent(history)
        best = min(r.time_s for r in ok)
        close = [r for r in ok if r.time_s <= best * (1 + TIE)]
        if len(close) == 1:
            return close[0]
        model = self.model(history)
        pred, pvar = model.predict_log(np.array([r.point for r in close]))
        meas = np.log([r.time_s for r in close])
        mvar = max(model.machine.noise_sd ** 2 / model.iterations, 1e-6)
        both = (meas / mvar + pred[:, 0] / pvar[:, 0]) / (1 / mvar + 1 / pvar[:, 0])
        return close[int(np.argmin(both))]

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        if not history:
            return Proposal(self.naive_point(), note="naive")
        model = self.model(history)
        if len(history) == 1 or not any(r.ok for r in history):
            p = self.fresh(self.design_point(), history, rng)
            note = "design point"
        else:
            # The local search's Gaussian draws come from their own (legacy) generator, seeded from rng.
            draws = np.random.RandomState(int(rng.integers(2 ** 31)))
            acquisition = Tabu(ExpectedImprovement(LogTime(model)), self.space, history)
            optimizer = ScheduleAcquisitionOptimizer(self.space, model, history, rng, draws)
            calc = SequentialPointCalculator(acquisition, optimizer)
            x = calc.compute_next_points(create_loop_state(model.X, np.log(model.Y)))[0]
            p = self.fresh(x, history, rng)
            note = f"expected improvement {optimizer.best_value:.3g} (log time)"
        mean, var = model.predict(p[None])
        return Proposal(p, float(mean[0, 0]), float(math.sqrt(max(var[0, 0], 0.0))), note)

    def design_point(self) -> np.ndarray:
        cl = self.problem.cluster
        n = len(cl)
        p = np.zeros((n, self.space.n_fields))
        by_network = sorted(range(n), key=lambda i: (-cl.nodes[i].type.nic_gbps, i))
        p[by_network[: max(1, math.ceil(n / 4))], 0] = 1
        p[:, 1] = 1
        speed = np.array([node.type.speed for node in cl.nodes])
        p[:, 2] = speed / speed.sum()
        p[:, 3] = [node.type.cores for node in cl.nodes]
        return self.space.repair(self.space.with_node_fields(p))


class Tabu(Acquisition):
    """An acquisition that is zero on schedules already measured (and `inner` elsewhere)."""

    def __init__(self, inner: Acquisition, space: ScheduleSpace, history: list[TrialRecord]):
        self.inner = inner
        self.space = space
        self.seen = {_row_key(space, r.point[None])[0] for r in history}

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """(n_points, 1) values at x (n_points, n_dims)."""
        v = self.inner.evaluate(x)
        hit = np.array([k in self.seen for k in _row_key(self.space, x)])
        return np.where(hit[:, None], 0.0, v)

    @property
    def has_gradients(self) -> bool:
        return False

    def update_parameters(self) -> None:
        self.inner.update_parameters()


def _row_key(space: ScheduleSpace, X: np.ndarray) -> list[bytes]:
    d = decode_many(space, np.atleast_2d(X))
    key = np.concatenate([d.servers.astype(np.int64), np.rint(d.batches).astype(np.int64),
                          np.where(d.workers, d.threads, 0).astype(np.int64)]
                         + ([d.codecs.astype(np.int64)] if space.tunes_codecs else [])
                         + ([d.syncs[:, None].astype(np.int64)] if space.tunes_syncs else []), axis=1)
    return [row.tobytes() for row in key]


class ScheduleAcquisitionOptimizer(AcquisitionOptimizerBase):
    """Emukit acquisition optimiser for schedule spaces, guided by a structured model (see module doc).
    rng draws the pool and the sampled neighbourhoods; draws (a legacy generator) the Gaussian
    neighbours of continuous parameters."""

    def __init__(self, space: ScheduleSpace, model: StructuredModel, history: list[TrialRecord],
                 rng: np.random.Generator, draws: np.random.RandomState):
        super().__init__(space.parameter_space())
        self.schedule_space = space
        self.model = model
        self.history = history
        self.rng = rng
        self.draws = draws
        self.best_value = 0.0

    def _optimize(self, acquisition: Acquisition, context_manager: ContextManager) -> tuple[np.ndarray, np.ndarray]:
        if context_manager.context:
            raise ValueError(f"a schedule space takes no context, got {dict(context_manager.context)}")
        pool = self.pool()
        mean = self.model.predict_mean(pool)
        order = np.argsort(mean, kind="stable")
        pick = list(order[:SCREEN_TOP])
        rest = order[SCREEN_TOP:]
        if len(rest):
            pick += list(self.rng.choice(rest, size=min(SCREEN_RANDOM, len(rest)), replace=False))
        cand = pool[pick]
        values = acquisition.evaluate(cand)[:, 0]
        starts = np.argsort(-values, kind="stable")[:LOCAL_STARTS]
        if len(self.schedule_space.cluster) <= EMUKIT_LOCAL_MAX_NODES:
            params = self.space.parameters

            def one_exchange(x: np.ndarray) -> np.ndarray:
                return one_exchange_neighbours(x, params, self.draws)
            found = [hill_climb(acquisition, cand[i], acquisition.evaluate(cand[i][None]).item(), one_exchange,
                                moves_on_ties=True) for i in starts]
        else:
            def sampled(x: np.ndarray) -> np.ndarray:
                return np.array([neighbour(self.schedule_space, x, self.rng, moves=1)
                                 for _ in range(SAMPLED_NEIGHBOURS)])
            found = [hill_climb(acquisition, cand[i], float(values[i]), sampled, moves_on_ties=False) for i in starts]
        # The search runs on raw points, whose batches need not be whole: the schedule that would run is
        # the repaired one, which may be one measured already or score differently. So the finalists
        # (the local searches' ends and the best of the pool) are repaired, measured ones dropped, and
        # scored again.
        order = np.argsort(-values, kind="stable")[:FINALISTS]
        finalists = np.concatenate([np.array([x for x, _ in found]), cand[order]])
        seen = {schedule_key(self.schedule_space, r.point) for r in self.history}
        fresh, keys = [], set()
        for x in finalists:
            p = self.schedule_space.repair(x)
            k = schedule_key(self.schedule_space, p)
            if k not in seen and k not in keys:
                keys.add(k)
                fresh.append(p)
        if not fresh:
            self.best_value = 0.0
            return finalists[:1], np.array([[0.0]])
        points = np.array(fresh)
        v = acquisition.evaluate(points)[:, 0]
        if v.max() > 1e-12:
            i = int(np.argmax(v))
        else:
            # Nothing promises an improvement: take the schedule predicted fastest.
            i = int(np.argmin(self.model.predict_mean(points)))
        self.best_value = float(v[i])
        return points[i][None, :], np.array([[v[i]]])

    # -- the candidate pool -------------------------------------------------------------------------

    def pool(self) -> np.ndarray:
        space, rng = self.schedule_space, self.rng
        parts = [informed_candidates(self.model), space.random_points(RANDOM_POOL, rng)]
        ok = sorted((r for r in self.history if r.ok), key=lambda r: r.time_s)[:3]
        for r in ok:
            parts.append(np.array([neighbour(space, r.point, rng) for _ in range(NEIGHBOURS)]))
            parts.append(r.point[None, :])
        return np.concatenate(parts)


def informed_candidates(model: StructuredModel, max_sets: int = 24) -> np.ndarray:
    """Schedules built from the fitted model (see module doc), (n, n_dims), not repaired."""
    space = model.space
    cl = model.problem.cluster
    n = len(cl)
    G = model.problem.global_batch
    ti = model.type_of_node
    theta = model.machine.theta
    top = np.array([max_threads(node.type.cores) for node in cl.nodes])
    caps = np.array(space.max_batch, dtype=float) if space.max_batch else None
    # Per node and thread count: step time = u + v * k under the fitted form.
    t_grid = np.arange(1, top.max() + 1)
    u = model.machine.form(theta, ti[:, None], 0.0, t_grid[None, :], t_grid[None, :])[0]
    v = model.machine.form(theta, ti[:, None], 1.0, t_grid[None, :], t_grid[None, :])[0] - u
    valid = t_grid[None, :] <= top[:, None]
    k_typ = G / n
    step = np.where(valid, u + v * k_typ, np.inf)
    best_t = t_grid[np.argmin(step, axis=1)]
    thread_options = [best_t, np.ones(n, dtype=int)]
    if np.array_equal(best_t, thread_options[1]):
        thread_options = thread_options[:1]

    bw, _ = model.network.node_params(model.network.theta)
    bw = bw[0, 0]
    by_net = sorted(range(n), key=lambda i: (-bw[i], i))
    server_sets = [by_net[:m] for m in _grid(min(n, 8), max_sets // 2)]
    server_sets += [[i] for i in range(n)][: max_sets]
    sizes = _grid(n, max_sets)

    codec_sets = codec_options(model, bw) if space.tunes_codecs else [np.zeros(n, dtype=int)]
    speed = np.array([node.type.speed for node in cl.nodes])
    combos = []      # (servers, workers, threads, fixed step seconds, seconds per sample, codecs)
    for threads in thread_options:
        uu = u[np.arange(n), threads - 1]
        vv = v[np.arange(n), threads - 1]
        fast = np.argsort(vv + uu / max(k_typ, 1.0), kind="stable")
        for servers in server_sets:
            for j in sizes:
                for codecs in codec_sets:
                    # Encoding (all of a worker's values, near enough) lengthens the step by a fixed time.
                    enc = model.codecs.encode[codecs] * model.problem.params / speed
                    combos.append((servers, fast[:j], threads, uu + enc, vv, codecs))
    F = space.n_fields
    X3 = np.zeros((len(combos), n, F))
    for c, (servers, workers, threads, uu, vv, codecs) in enumerate(combos):
        X3[c, servers, 0] = 1
        X3[c, :, 3] = threads
        if space.tunes_codecs:
            X3[c, :, 4] = codecs
        k = equalise(G, uu, vv, np.isin(np.arange(n), workers), caps)
        X3[c, :, 1] = k > 0
        X3[c, :, 2] = k / max(k.sum(), 1e-12)
    # Second pass: equalise pull + compute + push, the network times taken from the first pass (of a
    # synchronous iteration: the parts the model reports).
    parts = model.compose_parts(space.with_node_fields(X3))
    net = parts["pull"] + parts["push"]
    X2 = X3.copy()
    for c, (_, _, _, uu, vv, _) in enumerate(combos):
        use = X2[c, :, 1] > 0
        k = equalise(G, uu + net[c], vv, use, caps)
        X2[c, :, 1] = k > 0
        X2[c, :, 2] = k / max(k.sum(), 1e-12)
    # Not repaired: the model reads shares as batches exactly, and repairing thousands of points one by
    # one in Python would cost more than scoring them; the point chosen is repaired before it runs.
    both = np.concatenate([X3, X2])
    return np.concatenate([space.with_node_fields(both, k) for k in range(len(space.syncs))])


def codec_options(model: StructuredModel, bandwidth: np.ndarray) -> list[np.ndarray]:
    """Codec indices per node (n_nodes,) for informed candidates: the job's codec everywhere, each other
    allowed codec everywhere, and per node the codec whose encoding and push of the whole model over the
    node's NIC (bandwidth, bytes/s per node) take least, on every node and on the nodes slower than the
    best-connected only. Distinct, in that order."""
    problem, codecs = model.problem, model.codecs
    n, K = len(problem.cluster), len(problem.codecs)
    options = [np.full(n, k, dtype=int) for k in range(K)]
    wire = np.array([problem.push_slice_bytes(k, 1) for k in range(K)])
    cost = codecs.encode[None, :] * problem.params / codecs.speed[:, None] + wire[None, :] / bandwidth[:, None]
    cheapest = np.argmin(cost, axis=1)
    options += [cheapest, np.where(bandwidth < bandwidth.max(), cheapest, 0)]
    out: list[np.ndarray] = []
    for o in options:
        if not any(np.array_equal(o, x) for x in out):
            out.append(o)
    return out


def _grid(n: int, most: int) -> list[int]:
    """1..n, or about `most` values from 1 to n spaced geometrically."""
    if n <= most:
        return list(range(1, n + 1))
    return sorted({int(round(x)) for x in np.geomspace(1, n, most)})


def hill_climb(acquisition: Acquisition, x: np.ndarray, value: float, neighbours: Callable[[np.ndarray], np.ndarray],
               moves_on_ties: bool, steps: int = LOCAL_STEPS) -> tuple[np.ndarray, float]:
    """Local maximum of acquisition from x (n_dims,) whose value is given: at most `steps` moves to the best
    of neighbours(x) (n_neighbours, n_dims), while that is better (or as good, with moves_on_ties, as
    Emukit's LocalSearchAcquisitionOptimizer does). Returns the point and its value."""
    for _ in range(steps):
        nbrs = neighbours(x)
        v = acquisition.evaluate(nbrs)[:, 0]
        i = int(np.argmax(v))
        if v[i] < value or (v[i] == value and not moves_on_ties):
            break
        x, value = nbrs[i], float(v[i])
    return x, value


def one_exchange_neighbours(x: np.ndarray, parameters: Sequence[Parameter], draws: np.random.RandomState,
                            num_continuous: int = CONTINUOUS_NEIGHBOURS, std_dev: float = CONTINUOUS_SD) -> np.ndarray:
    """The one-exchange neighbourhood of x (n_dims,) as Emukit's LocalSearchAcquisitionOptimizer defines it,
    (n_neighbours, n_dims): x with one parameter changed, to each value next to it for a discrete
    parameter, to num_continuous Gaussian draws (std_dev of the range, inside it) for a continuous one."""
    blocks = []
    col = 0
    for param in parameters:
        value = param.round(x[col:col + param.dimension].reshape(1, -1)).ravel()
        if isinstance(param, DiscreteParameter):
            at = int(np.argmin(np.abs(np.subtract(param.domain, value.item()))))
            near = [param.domain[j] for j in (at - 1, at + 1) if 0 <= j < len(param.domain)]
            new = np.asarray(near, dtype=float).reshape(-1, 1)
        elif isinstance(param, ContinuousParameter):
            samples: list[float] = []
            while len(samples) < num_continuous:
                d = float(draws.normal(value.item(), std_dev * (param.max - param.min), (1, 1))[0, 0])
                if param.min <= d <= param.max:
                    samples.append(d)
            new = np.array(samples).reshape(-1, 1)
        else:
            raise TypeError(f"no one-exchange neighbourhood for {type(param).__name__} {param.name!r}")
        blocks.append((col, new))
        col += param.dimension
    out = np.repeat(x[None, :].astype(float), sum(len(b) for _, b in blocks), axis=0)
    row = 0
    for col, new in blocks:
        out[row:row + len(new), col:col + new.shape[1]] = new
        row += len(new)
    return out
