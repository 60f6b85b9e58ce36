"""What a careful engineer would do by hand: measure each node's speed on the naive schedule, give
batches in proportion to it, put servers on the best-connected nodes, and then try, one at a time,

    1. one thread per worker against as many threads as the node has cores;
    2. more servers (2, 3, ...) on the next best-connected nodes, while that helps;
    3. batches that equalise measured step times, fixed costs included (an affine fit per node);
    4. leaving out the slowest kind of node, then the next slowest too, while that helps;

and after that keep re-balancing the best setting with the latest measurements, or try small changes
around it. Each trial's note records its setting, which is how the next call knows where it stands.
"""

from __future__ import annotations

import re

import numpy as np

from hpcps.tune.strategies import Proposal, Strategy, TrialRecord, neighbour
from hpcps.tune.space import FIELDS

_NOTE = re.compile(r"heuristic threads=(\w+) servers=(\d+) drop=(\d+) balance=(\w+)")


class HeuristicStrategy(Strategy):
    name = "heuristic"

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        if not history:
            return Proposal(self.naive_point(), note="naive")
        obs = [r.observations for r in history if r.observations is not None and len(r.observations)]
        obs = np.concatenate(obs) if obs else None
        results: dict[tuple, float] = {}
        for r in history:
            m = _NOTE.match(r.note)
            if m:
                cfg = (m.group(1), int(m.group(2)), int(m.group(3)), m.group(4))
                t = r.iteration_time_s if r.ok else np.inf
                results[cfg] = min(results.get(cfg, np.inf), t)
        seen = self.measured(history)
        for cfg in self._next_configs(results):
            p = self.build(cfg, obs)
            if cfg not in results and self.key(p) not in seen:
                return Proposal(p, note=self._note(cfg))
        # Everything planned is done: the best setting with the latest measurements, else small changes.
        best_cfg = min(results, key=results.get) if results else ("one", 1, 0, "prop")
        p = self.build(best_cfg, obs)
        if self.key(p) not in seen:
            return Proposal(p, note=self._note(best_cfg))
        best = min((r for r in history if r.ok), key=lambda r: r.iteration_time_s, default=history[-1])
        return Proposal(self.fresh(neighbour(self.space, best.point, rng, moves=1), history, rng),
                        note=f"change to trial {best.trial}")

    @staticmethod
    def _note(cfg) -> str:
        return "heuristic threads={} servers={} drop={} balance={}".format(*cfg)

    def _next_configs(self, results: dict[tuple, float]):
        """The plan, in order; a stage's choice depends on the results of the stages before it."""
        t = lambda cfg: results.get(cfg, np.inf)          # noqa: E731
        a, b = ("one", 1, 0, "prop"), ("cores", 1, 0, "prop")
        yield a
        yield b
        th = "cores" if t(b) < t(a) else "one"
        max_servers = max(1, len(self.problem.cluster) // 2)
        m = 1
        while m < max_servers:
            cfg = (th, m + 1, 0, "prop")
            yield cfg
            if t(cfg) < t((th, m, 0, "prop")):
                m += 1
            else:
                break
        base = (th, m, 0, "prop")
        aff = (th, m, 0, "affine")
        yield aff
        bal = "affine" if t(aff) < t(base) else "prop"
        d = 0
        while d < len(self.problem.cluster.types) - 1:
            cfg = (th, m, d + 1, bal)
            yield cfg
            if t(cfg) < t((th, m, d, bal)):
                d += 1
            else:
                break

    # -- building a schedule from a setting ---------------------------------------------------------

    def build(self, cfg, obs) -> np.ndarray:
        threads_mode, n_servers, drop, balance = cfg
        cl = self.problem.cluster
        n = len(cl)
        threads = np.array([1 if threads_mode == "one" else node.type.cores for node in cl.nodes])
        speed, fixed, per_sample = self._speeds(obs, threads)
        use = np.ones(n, dtype=bool)
        if drop:
            # Leave out every node of the `drop` slowest node types (by measured speed).
            kinds = sorted({node.type.name for node in cl.nodes},
                           key=lambda t: np.mean([speed[i] for i in range(n) if cl.nodes[i].type.name == t]))
            slow = set(kinds[:drop])
            use = np.array([node.type.name not in slow for node in cl.nodes])
        if balance == "affine":
            share = _equalise(self.problem.global_batch, fixed, per_sample, use)
        else:
            share = np.where(use, speed, 0.0)
        by_network = sorted(range(n), key=lambda i: (-cl.nodes[i].type.nic_gbps, i))
        p = np.zeros((n, len(FIELDS)))
        p[by_network[:n_servers], 0] = 1
        p[:, 1] = share > 0
        p[:, 2] = share / share.sum()
        p[:, 3] = threads
        return self.space.repair(p.reshape(-1))

    def _speeds(self, obs, threads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per node: measured samples per second (batch over step time, at the given threads when measured
        so, else at any), and an affine fit step = fixed + per_sample * batch where the node was measured
        at batches far enough apart (else no fixed cost). Nodes never measured get the cluster file's
        relative speed."""
        cl = self.problem.cluster
        n = len(cl)
        speed = np.full(n, np.nan)
        fixed, per_sample = np.zeros(n), np.full(n, np.nan)
        if obs is not None:
            w = obs[(obs["batch"] > 0) & (obs["compute_s"] > 0)]
            for i in range(n):
                rows = w[w["node"] == i]
                at = rows[rows["threads"] == threads[i]]
                rows = at if len(at) else rows
                if not len(rows):
                    continue
                speed[i] = float(np.median(rows["batch"] / rows["compute_s"]))
                ks = np.unique(rows["batch"])
                if len(ks) >= 2 and ks.max() >= 1.5 * ks.min():
                    means = np.array([rows["compute_s"][rows["batch"] == k].mean() for k in ks])
                    v, u = np.polyfit(ks.astype(float), means, 1)
                    if v > 0 and u >= 0:
                        fixed[i], per_sample[i] = u, v
        known = np.isfinite(speed)
        file_speed = np.array([node.type.speed for node in cl.nodes])
        if known.any():
            ratio = np.median(speed[known] / file_speed[known])
            speed[~known] = file_speed[~known] * ratio
        else:
            speed = file_speed.copy()
        no_fit = ~np.isfinite(per_sample)
        per_sample[no_fit] = 1.0 / speed[no_fit]
        return speed, fixed, per_sample


def _equalise(total: int, fixed: np.ndarray, per_sample: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Batches k_i with fixed_i + per_sample_i * k_i equal across the used nodes and summing to total;
    nodes that would get less than nothing are left out."""
    use = use.copy()
    for _ in range(len(use)):
        inv = np.where(use, 1.0 / per_sample, 0.0)
        tau = (total + np.sum(np.where(use, fixed / per_sample, 0.0))) / inv.sum()
        k = np.where(use, (tau - fixed) / per_sample, 0.0)
        if (k[use] > 0).all():
            return np.maximum(k, 0.0)
        use &= k > 0
    return np.where(use, 1.0, 0.0)
