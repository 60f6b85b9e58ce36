"""Random search: the naive schedule, then points drawn uniformly from the encoded space, repaired."""

from __future__ import annotations

import numpy as np

from hpcps.tune.strategies.base import Strategy
from hpcps.tune.trials import Proposal, TrialRecord


class RandomStrategy(Strategy):
    name = "random"

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        if not history:
            return Proposal(self.naive_point(), note="naive")
        return Proposal(self.fresh(self.space.random_points(1, rng)[0], history, rng), note="random")
