"""A generic optimiser as a user would reach for it: Optuna's TPE sampler with its defaults, asked and told
through Optuna's ask-and-tell interface over the same compact encoding as the other strategies (per
node: server yes/no, worker yes/no, share of the batch in [0, 1], threads), on log iteration time.

The first trial is the naive schedule (enqueued), as for every other strategy; a failed trial is told as
failed. It lives with the benchmarks, not in hpcps: it is a baseline, and Optuna is not a dependency
of the tuner (`pip install optuna` to run it).
"""

from __future__ import annotations

import math

import numpy as np

from hpcps.tune.space import max_threads
from hpcps.tune.strategies.base import Strategy
from hpcps.tune.trials import Proposal, TrialRecord


class TPEStrategy(Strategy):
    name = "tpe"

    def __init__(self, problem, seed: int = 0):
        super().__init__(problem, seed)
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
        self.pending: dict[int, object] = {}        # our trial number -> Optuna's trial, until told
        self.names = []
        for i, node in enumerate(problem.cluster.nodes):
            self.names.append((f"server_{i}", f"worker_{i}", f"share_{i}", f"threads_{i}",
                               max_threads(node.type.cores)))
        naive = self.naive_point().reshape(len(problem.cluster), -1)
        self.study.enqueue_trial({k: v for (s, w, sh, t, _), row in zip(self.names, naive)
                                  for k, v in ((s, int(row[0])), (w, int(row[1])), (sh, float(row[2])),
                                               (t, int(row[3])))})

    def _tell(self, history: list[TrialRecord]) -> None:
        for rec in history:
            trial = self.pending.pop(rec.trial, None)
            if trial is None:
                continue
            if rec.ok and rec.iteration_time_s and math.isfinite(rec.iteration_time_s):
                self.study.tell(trial, math.log(rec.iteration_time_s))
            else:
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)

    def propose(self, history: list[TrialRecord], rng: np.random.Generator) -> Proposal:
        self._tell(history)
        trial = self.study.ask()
        row = []
        for s, w, sh, t, top in self.names:
            row += [trial.suggest_int(s, 0, 1), trial.suggest_int(w, 0, 1), trial.suggest_float(sh, 0.0, 1.0),
                    trial.suggest_int(t, 1, top)]
        self.pending[len(history) + 1] = trial
        return Proposal(np.array(row, dtype=float), note="tpe")
