"""What a careful engineer would do by hand: measure each node's speed on the naive schedule, give
batches in proportion to it, put servers on the best-connected nodes, and then try, one at a time,

    1. one thread per worker against as many threads as the node has cores;
    2. more servers (2, 3, ...) on the next best-connected nodes, while that helps;
    3. batches that equalise measured step times, fixed costs included (an affine fit per node);
    4. leaving out the slowest kind of node, then the next slowest too, while that helps;
    5. where the run may choose push codecs (tune --codecs): the allowed codec that puts the fewest
       bytes on the wire (if it is not the job's own) for the workers on the slowest NICs, then on the
       next slowest too, while that helps: a slow NIC is where a push takes longest;
    6. where the run may choose the synchronisation (tune --syncs): each other allowed one in turn on
       the best setting so far (the choice is the user's to allow: convergence is not measured);

and after that keep re-balancing the best setting with the latest measurements, or try small changes
around it. Each trial's Proposal.setting records its Setting, which is how the next call knows where
the plan stands.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from hpcps.tune.strategies.balance import ANY_SHARE, equalise
from hpcps.tune.strategies.base import Strategy, neighbour
from hpcps.tune.trials import Proposal, TrialRecord, fastest


class Setting(NamedTuple):
    threads: str            # "one" per worker, or the node's "cores"
    servers: int            # on the best-connected nodes
    drop: int               # node types left out, slowest first
    balance: str            # "prop": batches in proportion to speed; "affine": equal step times
    compress: int = 0       # NIC speeds, slowest first, whose workers push with the smallest allowed codec
    sync: int = 0           # index into the allowed synchronisations (0: the job's)

    @property
    def note(self) -> str:
        return "heuristic threads={} servers={} drop={} balance={}".format(*self) + \
            (f" compress={self.compress}" if self.compress else "") + (f" sync={self.sync}" if self.sync else "")

    def to_json(self) -> dict:
        """What Proposal.setting keeps (compress and sync only when set: a run without codecs or syncs
        keeps what it kept)."""
        d = self._asdict()
        for optional in ("compress", "sync"):
            if not d[optional]:
                del d[optional]
        return d


START = Setting("one", 1, 0, "prop")


class HeuristicStrategy(Strategy):
    name = "heuristic"

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        if not history:
            return Proposal(self.naive_point(), note="naive")
        obs = [r.observations for r in history if r.observations is not None and len(r.observations)]
        all_obs = np.concatenate(obs) if obs else None
        results: dict[Setting, float] = {}
        for r in history:
            if r.setting is not None:
                cfg = Setting(**r.setting)
                results[cfg] = min(results.get(cfg, np.inf), r.time_s)
        seen = self.measured(history)
        for cfg in self._next_configs(results):
            p = self.build(cfg, all_obs)
            if cfg not in results and self.key(p) not in seen:
                return self._proposal(p, cfg)
        # Everything planned is done: the best setting with the latest measurements, else small changes.
        best_cfg = min(results, key=lambda c: results[c]) if results else START
        p = self.build(best_cfg, all_obs)
        if self.key(p) not in seen:
            return self._proposal(p, best_cfg)
        best = fastest(history) or history[-1]
        return Proposal(self.fresh(neighbour(self.space, best.point, rng, moves=1), history, rng),
                        note=f"change to trial {best.trial}")

    @staticmethod
    def _proposal(point: np.ndarray, cfg: Setting) -> Proposal:
        return Proposal(point, note=cfg.note, setting=cfg.to_json())

    def smallest_codec(self) -> int:
        """The allowed codec (index) with the fewest bytes on the wire; 0 (the job's) when the space has
        no other or none smaller."""
        if not self.space.tunes_codecs:
            return 0
        wire = [self.problem.push_slice_bytes(k, 1) for k in range(len(self.space.codecs))]
        return int(np.argmin(wire))

    def nic_speeds(self) -> list[float]:
        """The cluster's distinct NIC bandwidths, slowest first."""
        return sorted({node.type.nic_gbps for node in self.problem.cluster.nodes})

    def _next_configs(self, results: dict[Setting, float]) -> Iterator[Setting]:
        """The plan, in order; a stage's choice depends on the results of the stages before it."""
        def t(cfg: Setting) -> float:
            return results.get(cfg, np.inf)

        a, b = START, START._replace(threads="cores")
        yield a
        yield b
        th = "cores" if t(b) < t(a) else "one"
        max_servers = max(1, len(self.problem.cluster) // 2)
        m = 1
        while m < max_servers:
            cfg = Setting(th, m + 1, 0, "prop")
            yield cfg
            if t(cfg) < t(Setting(th, m, 0, "prop")):
                m += 1
            else:
                break
        base = Setting(th, m, 0, "prop")
        aff = Setting(th, m, 0, "affine")
        yield aff
        bal = "affine" if t(aff) < t(base) else "prop"
        d = 0
        while d < len(self.problem.cluster.types) - 1:
            cfg = Setting(th, m, d + 1, bal)
            yield cfg
            if t(cfg) < t(Setting(th, m, d, bal)):
                d += 1
            else:
                break
        c = 0
        while self.smallest_codec() != 0 and c < len(self.nic_speeds()):
            cfg = Setting(th, m, d, bal, c + 1)
            yield cfg
            if t(cfg) < t(Setting(th, m, d, bal, c)):
                c += 1
            else:
                break
        for k in range(1, len(self.space.syncs)):
            yield Setting(th, m, d, bal, c, k)

    # -- building a schedule from a setting ---------------------------------------------------------

    def build(self, cfg: Setting, obs: np.ndarray | None) -> np.ndarray:
        cl = self.problem.cluster
        n = len(cl)
        threads = np.array([1 if cfg.threads == "one" else node.type.cores for node in cl.nodes])
        speed, fixed, per_sample = self._speeds(obs, threads)
        use = np.ones(n, dtype=bool)
        if cfg.drop:
            # Leave out every node of the `drop` slowest node types (by measured speed).
            kinds = sorted({node.type.name for node in cl.nodes},
                           key=lambda t: np.mean([speed[i] for i in range(n) if cl.nodes[i].type.name == t]))
            slow = set(kinds[:cfg.drop])
            use = np.array([node.type.name not in slow for node in cl.nodes])
        if cfg.balance == "affine":
            share = equalise(self.problem.global_batch, fixed, per_sample, use, least=ANY_SHARE)
        else:
            share = np.where(use, speed, 0.0)
        by_network = sorted(range(n), key=lambda i: (-cl.nodes[i].type.nic_gbps, i))
        p = np.zeros((n, self.space.n_fields))
        p[by_network[:cfg.servers], 0] = 1
        p[:, 1] = share > 0
        p[:, 2] = share / share.sum()
        p[:, 3] = threads
        if cfg.compress and self.space.tunes_codecs:
            behind = np.array([node.type.nic_gbps for node in cl.nodes]) <= self.nic_speeds()[cfg.compress - 1]
            p[behind, 4] = self.smallest_codec()
        return self.space.repair(self.space.with_node_fields(p, cfg.sync))

    def _speeds(self, obs: np.ndarray | None, threads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
