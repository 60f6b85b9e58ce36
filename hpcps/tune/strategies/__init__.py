"""Search strategies, one interface:

    strategy = make_strategy(name, problem, seed)
    proposal = strategy.propose(history, rng)      # Proposal(point, predicted_s, predicted_sd, note)

history is every trial so far (TrialRecord: point, status, iteration_time_s, observations). A strategy
keeps no state between calls: everything it knows comes from history and the seed, so a run resumed
after a kill proposes exactly what an unbroken run would have. Every strategy starts with the naive
schedule (the speed-up baseline) and never repeats a schedule it has measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from hpcps.cluster.placement import naive
from hpcps.tune.problem import Problem
from hpcps.tune.space import FIELDS, max_threads


@dataclass
class TrialRecord:
    trial: int                                   # from 1
    point: np.ndarray                            # (n_dims,) the repaired point that ran
    status: str                                  # "ok" or why not
    iteration_time_s: float | None = None
    observations: np.ndarray | None = None
    predicted_s: float | None = None
    predicted_sd: float | None = None
    note: str = ""
    schedule: dict = field(default_factory=dict)
    summary: str = ""
    elapsed_s: float = 0.0
    propose_s: float = 0.0
    trace_path: str | None = None
    observations_file: str | None = None         # relative to the run's directory
    propose_cpu_s: float = 0.0                   # CPU time of the proposal (propose_s is wall time)
    incumbent: int | None = None                 # the run's best schedule after this trial (a trial number)
    incumbent_s: float = 0.0                     # wall and CPU time choosing it (structured fits its model
    incumbent_cpu_s: float = 0.0                 # there, and the next proposal reuses the fit)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.iteration_time_s is not None


@dataclass(frozen=True)
class Proposal:
    point: np.ndarray
    predicted_s: float | None = None
    predicted_sd: float | None = None
    note: str = ""


class Strategy:
    name = "?"

    def __init__(self, problem: Problem, seed: int = 0):
        self.problem = problem
        self.space = problem.space
        self.seed = seed

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        raise NotImplementedError

    def incumbent(self, history: list[TrialRecord]) -> TrialRecord | None:
        """The run's best schedule so far: by default the one measured fastest."""
        ok = [r for r in history if r.ok]
        return min(ok, key=lambda r: r.iteration_time_s) if ok else None

    # -- shared helpers -----------------------------------------------------------------------------

    def naive_point(self) -> np.ndarray:
        return self.space.repair(self.space.encode(naive(self.problem.cluster, self.problem.global_batch)))

    def key(self, point: np.ndarray) -> bytes:
        return schedule_key(self.space, point)

    def measured(self, history: list[TrialRecord]) -> set[bytes]:
        return {self.key(r.point) for r in history}

    def fresh(self, point: np.ndarray, history: list[TrialRecord], rng: np.random.Generator,
              tries: int = 200) -> np.ndarray:
        """point repaired, or a random neighbour of it when that schedule was measured already."""
        seen = self.measured(history)
        p = self.space.repair(point)
        for _ in range(tries):
            if self.key(p) not in seen:
                return p
            p = self.space.repair(neighbour(self.space, p, rng))
        return p


def schedule_key(space, point: np.ndarray) -> bytes:
    """What identifies the schedule a point runs: its repaired servers, batches and threads."""
    p = np.asarray(space.repair(point)).reshape(len(space.cluster), len(FIELDS)).copy()
    p[:, 2] = np.rint(p[:, 2] * space.global_batch)
    p[p[:, 1] < 0.5, 3] = 0
    return np.rint(p).astype(np.int64).tobytes()


def neighbour(space, point: np.ndarray, rng: np.random.Generator, moves: int | None = None) -> np.ndarray:
    """A random nearby point: one to three changes among flipping a server or a worker, moving part of
    one worker's batch to another, and changing one node's threads."""
    n = len(space.cluster)
    p = np.asarray(point, dtype=float).reshape(n, len(FIELDS)).copy()
    for _ in range(moves or int(rng.integers(1, 4))):
        i = int(rng.integers(n))
        kind = int(rng.integers(4))
        if kind == 0:
            p[i, 0] = 1 - p[i, 0]
        elif kind == 1:
            p[i, 1] = 1 - p[i, 1]
            if p[i, 1] > 0.5 and p[i, 2] <= 0:
                p[i, 2] = 1.0 / space.global_batch
        elif kind == 2:
            j = int(rng.integers(n))
            moved = p[i, 2] * rng.uniform(0.1, 0.6)
            p[i, 2] -= moved
            p[j, 2] += moved
            p[j, 1] = 1.0
        else:
            top = max_threads(space.cluster.nodes[i].type.cores)
            p[i, 3] = int(np.clip(p[i, 3] + rng.choice([-2, -1, 1, 2]), 1, top))
    return p.reshape(-1)


def _registry() -> dict[str, Callable]:
    from hpcps.tune.strategies.anneal import AnnealStrategy
    from hpcps.tune.strategies.gp import GPStrategy
    from hpcps.tune.strategies.heuristic import HeuristicStrategy
    from hpcps.tune.strategies.random import RandomStrategy
    from hpcps.tune.strategies.structured import StructuredStrategy
    return {"structured": StructuredStrategy, "gp": GPStrategy, "random": RandomStrategy,
            "anneal": AnnealStrategy, "heuristic": HeuristicStrategy}


STRATEGIES = ("structured", "gp", "random", "anneal", "heuristic")


def make_strategy(name: str, problem: Problem, seed: int = 0) -> Strategy:
    reg = _registry()
    if name not in reg:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return reg[name](problem, seed)
