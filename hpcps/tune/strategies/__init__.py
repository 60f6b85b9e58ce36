"""Search strategies, one interface:

    strategy = make_strategy(name, problem, seed)
    proposal = strategy.propose(history, rng)      # Proposal(point, predicted_s, predicted_sd, note, setting)

history is every trial so far (TrialRecord: point, status, iteration_time_s, observations, setting). A
strategy keeps no state between calls: everything it knows comes from history and the seed, so a run
resumed after a kill proposes exactly what an unbroken run would have. What a strategy needs to
remember of its own choices it puts in Proposal.setting, which comes back as TrialRecord.setting.
Every strategy starts with the naive schedule (the speed-up baseline) and never repeats a schedule it
has measured.
"""

from __future__ import annotations

from hpcps.tune.problem import Problem
from hpcps.tune.strategies.anneal import AnnealStrategy
from hpcps.tune.strategies.base import Strategy, neighbour, schedule_key
from hpcps.tune.strategies.gp import GPStrategy
from hpcps.tune.strategies.heuristic import HeuristicStrategy
from hpcps.tune.strategies.random import RandomStrategy
from hpcps.tune.strategies.structured import StructuredStrategy
from hpcps.tune.trials import Proposal, TrialRecord

REGISTRY: dict[str, type[Strategy]] = {"structured": StructuredStrategy, "gp": GPStrategy, "random": RandomStrategy,
                                       "anneal": AnnealStrategy, "heuristic": HeuristicStrategy}
STRATEGIES = tuple(REGISTRY)

__all__ = ["STRATEGIES", "REGISTRY", "Proposal", "Strategy", "TrialRecord", "make_strategy", "neighbour",
           "schedule_key"]


def make_strategy(name: str, problem: Problem, seed: int = 0) -> Strategy:
    if name not in REGISTRY:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return REGISTRY[name](problem, seed)
