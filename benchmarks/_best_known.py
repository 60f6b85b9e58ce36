"""The best known schedule of a job on a cluster, by a long search on the noise-free simulator.

Iterated local search over integer schedules (per node: server or not, batch, threads): start from
the given seeds and the best of many random and built-in schedules, then repeatedly take the best of
the neighbourhood (move one sample, or a few, from one worker to another; add or remove a server;
start or stop a worker; one thread more or less), and when stuck, kick the schedule and search again.
Every schedule is simulated without noise; results are cached.
"""

from __future__ import annotations

import math
import time

import numpy as np

from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker, balanced, naive
from hpcps.tune.space import max_threads


class BestKnownSearch:
    def __init__(self, problem, backend, seed: int = 0):
        self.problem = problem
        self.space = problem.space
        self.backend = backend
        self.rng = np.random.default_rng(seed)
        self.cache: dict[bytes, float] = {}
        self.n = len(problem.cluster)
        self.top = np.array([max_threads(nd.type.cores) for nd in problem.cluster.nodes])
        self.caps = np.array(self.space.max_batch or [problem.global_batch] * self.n)

    # -- schedules as arrays ------------------------------------------------------------------------

    def to_arrays(self, s: NodeSchedule):
        srv = np.zeros(self.n, bool)
        k = np.zeros(self.n, int)
        t = np.ones(self.n, int)
        for p in s.nodes:
            i = self.problem.cluster.index(p.name)
            srv[i] = p.server
            if p.workers:
                k[i] = p.workers[0].batch
                t[i] = p.workers[0].threads
        return srv, k, t

    def to_schedule(self, srv, k, t) -> NodeSchedule:
        plans = []
        for i, node in enumerate(self.problem.cluster.nodes):
            ws = (NodeWorker(int(k[i]), int(t[i])),) if k[i] > 0 else ()
            if ws or srv[i]:
                plans.append(NodePlan(node.name, bool(srv[i]), ws))
        return NodeSchedule(tuple(plans), "<best known>")

    def valid(self, srv, k, t) -> bool:
        return (srv.any() and (k > 0).any() and k.sum() == self.problem.global_batch and (k >= 0).all()
                and (k <= self.caps).all() and (t >= 1).all() and (t <= self.top).all())

    def time(self, srv, k, t) -> float:
        if not self.valid(srv, k, t):
            return math.inf
        key = np.concatenate([srv.astype(int), k, np.where(k > 0, t, 0)]).tobytes()
        if key not in self.cache:
            self.cache[key] = self.backend.true_time(self.to_schedule(srv, k, t), iterations=2)
        return self.cache[key]

    # -- the search ---------------------------------------------------------------------------------

    def neighbours(self, srv, k, t):
        G = self.problem.global_batch
        workers = np.flatnonzero(k > 0)
        for i in range(self.n):
            s2 = srv.copy()
            s2[i] = not s2[i]
            yield s2, k, t
            for d in (-1, 1):
                t2 = t.copy()
                t2[i] += d
                if k[i] > 0 and 1 <= t2[i] <= self.top[i]:
                    yield srv, k, t2
        for i in workers:
            for j in range(self.n):
                if i == j:
                    continue
                for amount in {1, max(1, k[i] // 4), k[i]}:
                    if amount > k[i]:
                        continue
                    k2 = k.copy()
                    k2[i] -= amount
                    k2[j] += amount
                    if k2.sum() == G:
                        yield srv, k2, t

    def descend(self, srv, k, t, deadline: float):
        best = self.time(srv, k, t)
        while time.monotonic() < deadline:
            cand = min(((self.time(*nb), nb) for nb in self.neighbours(srv, k, t)), key=lambda x: x[0])
            if cand[0] >= best * (1 - 1e-6):
                break
            best, (srv, k, t) = cand[0], cand[1]
        return best, (srv, k, t)

    def kick(self, srv, k, t):
        srv, k, t = srv.copy(), k.copy(), t.copy()
        for _ in range(int(self.rng.integers(2, 5))):
            i, j = self.rng.integers(self.n, size=2)
            move = int(self.rng.integers(4))
            if move == 0:
                srv[i] = not srv[i]
            elif move == 1 and k[i] > 0:
                amount = int(self.rng.integers(1, k[i] + 1))
                k[i] -= amount
                k[j] += amount
            elif move == 2 and k[i] > 0:
                t[i] = int(self.rng.integers(1, self.top[i] + 1))
            elif k[i] > 0 and k[j] > 0 and i != j:
                k[j] += k[i]
                k[i] = 0
        return srv, k, t

    def run(self, seeds: list[NodeSchedule], budget_s: float = 60.0, n_random: int = 300):
        """(best time, best schedule, evaluations) within about budget_s seconds."""
        deadline = time.monotonic() + budget_s
        cl, G = self.problem.cluster, self.problem.global_batch
        starts = list(seeds) + [naive(cl, G), balanced(cl, G)]
        for p in self.space.random_points(n_random, self.rng):
            starts.append(self.space.decode(p))
        scored = []
        for s in starts:
            arr = self.to_arrays(s)
            scored.append((self.time(*arr), arr))
        scored.sort(key=lambda x: x[0])
        best_t, best = scored[0]
        for _, arr in scored[:5]:
            tt, a = self.descend(*arr, deadline)
            if tt < best_t:
                best_t, best = tt, a
        while time.monotonic() < deadline:
            tt, a = self.descend(*self.kick(*best), deadline)
            if tt < best_t:
                best_t, best = tt, a
        return best_t, self.to_schedule(*best), len(self.cache)
