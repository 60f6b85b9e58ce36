"""Simulated annealing over trials: each trial is a random neighbour of the current schedule, accepted
when faster, or when slower with probability exp(-(log slower - log current) / temperature); the
temperature falls geometrically from T0 to T1 over BUDGET_HINT trials and stays at T1 after.

The current schedule is rebuilt from the history each time (the acceptance draws come from the seed
and the trial number), so the strategy holds no state of its own.
"""

from __future__ import annotations

import math

import numpy as np

from hpcps.tune.strategies.base import Strategy, neighbour
from hpcps.tune.trials import Proposal, TrialRecord

T0, T1 = 0.3, 0.01                  # in units of log iteration time
BUDGET_HINT = 30


def temperature(trial: int) -> float:
    return T0 * (T1 / T0) ** min(1.0, (trial - 1) / BUDGET_HINT)


class AnnealStrategy(Strategy):
    name = "anneal"

    def current(self, history: list[TrialRecord]) -> TrialRecord | None:
        cur = None
        for rec in history:
            if not rec.ok:
                continue
            if cur is None or rec.time_s <= cur.time_s:
                cur = rec
                continue
            u = np.random.default_rng([self.seed, rec.trial, 7]).random()
            delta = math.log(rec.time_s) - math.log(cur.time_s)
            if u < math.exp(-delta / temperature(rec.trial)):
                cur = rec
        return cur

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        cur = self.current(history)
        if cur is None:
            if not history:
                return Proposal(self.naive_point(), note="naive")
            return Proposal(self.fresh(self.space.random_points(1, rng)[0], history, rng), note="random start")
        p = self.fresh(neighbour(self.space, cur.point, rng), history, rng)
        return Proposal(p, note=f"neighbour of trial {cur.trial}")
