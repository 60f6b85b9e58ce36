"""Synchronisation policies: when a worker may compute, and when an iteration is over.

A policy drives one rank through one iteration of the exchange (hpcps/ps/exchange.py) and its worker
(hpcps/ps/worker.py); everything else about a run (building, logging, evaluation, tracing) is the
runtime's. `bsp` is bulk-synchronous: every worker computes iteration k on the parameters after
iteration k-1's update of every piece, exactly the single-process step on the union of the batches.
Other policies (bounded staleness, asynchronous) answer pulls earlier; until they exist the job's
`training.sync` accepts only `bsp`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class IterationTimes:
    """Clock readings of one rank's iteration, for the trace (nan where the rank has no such phase)."""
    pull: tuple[float, float]
    data: tuple[float, float]
    compute: tuple[float, float]
    push: tuple[float, float]
    aggregate: tuple[float, float]
    loss: float = math.nan
    correct: float = 0.0


class BulkSynchronous:
    name = "bsp"

    def iteration(self, run, it: int, t_begin: float) -> IterationTimes:
        """One iteration on one rank. run: hpcps.ps.runtime.RankRun."""
        ex, clock, worker = run.exchange, run.clock, run.worker
        nan2 = (math.nan, math.nan)
        data = compute = pull = push = nan2
        loss = math.nan
        correct = 0.0
        if worker is not None:
            t0 = clock()
            batch = worker.load(run.partition.indices(it, run.worker_index))   # while the pulls arrive
            data = (t0, clock())
            if not run.wait_per_layer:
                ex.wait_pieces(slice(None))
            ex.begin_pushes(it)
            ex.blocked_s = 0.0
            t_c0 = clock()
            loss_t, correct = run.compute(batch)
            t_c1 = clock()
            # The trace's compute phase is the worker's own work: it starts later by the time its
            # layers waited for parameters (that waiting is the pull's, which the pull phase spans).
            t_c0 = min(t_c1, t_c0 + ex.blocked_s)
            if not run.overlap:
                for p in run.plan.push_order():
                    ex.push(p.index)
            compute = (t_c0, t_c1)
            loss = float(loss_t.detach())
            pull = (t_begin, max(t_begin, float(np.max(ex.arrived_at))) if len(ex.arrived_at) else t_begin)
            if it + 1 < run.iterations:
                ex.expect_pulls(it + 1)
        ex.wait_until(lambda: (worker is None or ex.pushes_done()) and ex.served_through(it))
        t_end = clock()
        agg = tuple(ex.aggregate_span) if np.isfinite(ex.aggregate_span).all() else (t_end, t_end)
        ex.aggregate_span = [math.inf, -math.inf]
        if worker is not None:
            push = (ex.first_push_at or t_c1, max(ex.last_push_at, ex.first_push_at or t_c1))
        else:               # a server alone: its pull is sending, its push waiting for every worker's
            pull, push = (t_begin, t_begin), (t_begin, agg[0])
        return IterationTimes(pull, data, compute, push, agg, loss, correct)


SYNC_POLICIES = {"bsp": BulkSynchronous}


def make_policy(name: str):
    try:
        return SYNC_POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown synchronisation {name!r}; choose one of {', '.join(SYNC_POLICIES)}") from None
