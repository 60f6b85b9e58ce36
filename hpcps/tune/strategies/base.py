"""What every strategy shares: the Strategy interface, what identifies a schedule, and random neighbours."""

from __future__ import annotations

import numpy as np

from hpcps.cluster.placement import naive
from hpcps.tune.problem import Problem
from hpcps.tune.space import ScheduleSpace, max_threads
from hpcps.tune.trials import Proposal, TrialRecord, fastest


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
        return fastest(history)

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


def schedule_key(space: ScheduleSpace, point: np.ndarray) -> bytes:
    """What identifies the schedule a point runs: its repaired servers, batches, threads (and codecs, and
    the synchronisation)."""
    repaired = space.repair(point)
    p = space.node_fields(repaired)
    p[:, 2] = np.rint(p[:, 2] * space.global_batch)
    p[p[:, 1] < 0.5, 3] = 0
    return np.rint(space.with_node_fields(p, space.sync_index(repaired))).astype(np.int64).tobytes()


def neighbour(space: ScheduleSpace, point: np.ndarray, rng: np.random.Generator,
              moves: int | None = None) -> np.ndarray:
    """A random nearby point: one to three changes among flipping a server or a worker, moving part of
    one worker's batch to another, changing one node's threads, and (where the space tunes codecs)
    giving one node's worker another codec, and (where the space tunes the synchronisation) running under
    another one."""
    n = len(space.cluster)
    p = space.node_fields(point)
    sync = space.sync_index(point)
    # The kinds of move this space has: 4 always, then a codec's, then a sync's (without either, the
    # draws are what they always were).
    kinds = [0, 1, 2, 3] + ([4] if space.tunes_codecs else []) + ([5] if space.tunes_syncs else [])
    for _ in range(moves or int(rng.integers(1, 4))):
        i = int(rng.integers(n))
        kind = kinds[int(rng.integers(len(kinds)))]
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
        elif kind == 3:
            top = max_threads(space.cluster.nodes[i].type.cores)
            p[i, 3] = int(np.clip(p[i, 3] + rng.choice([-2, -1, 1, 2]), 1, top))
        elif kind == 4:
            others = [k for k in range(len(space.codecs)) if k != int(round(p[i, 4]))]
            p[i, 4] = others[int(rng.integers(len(others)))]
        else:
            others = [k for k in range(len(space.syncs)) if k != sync]
            sync = others[int(rng.integers(len(others)))]
    return space.with_node_fields(p, sync)
