"""Synchronisation policies: when a worker may compute, and when an iteration is over.

A policy drives one rank through one iteration of the exchange (hpcps/ps/exchange.py) and its worker
(hpcps/ps/worker.py); everything else about a run (building, logging, evaluation, tracing) is the
runtime's. `bsp` is bulk-synchronous: every worker computes iteration k on the parameters after
iteration k-1's update of every piece, exactly the single-process step on the union of the batches.
`ssp` (bounded staleness s) lets a worker at clock c compute on any version >= c - s of every piece;
`asp` never waits for parameters (hpcps/ps/stale.py has their exchange).
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


def _push_all(run) -> None:
    """Push every piece after the step, in push order (without overlap)."""
    for p in run.plan.push_order():
        run.exchange.push(p.index)


def _take_aggregate_span(ex, t_end: float) -> tuple[float, float]:
    """The span of this iteration's aggregations on this rank (t_end, t_end if none), reset for the next."""
    agg = tuple(ex.aggregate_span) if np.isfinite(ex.aggregate_span).all() else (t_end, t_end)
    ex.aggregate_span = [math.inf, -math.inf]
    return agg


class BulkSynchronous:
    name = "bsp"
    staleness = 0

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
                _push_all(run)
            compute = (t_c0, t_c1)
            loss = float(loss_t.detach())
            pull = (t_begin, max(t_begin, float(np.max(ex.arrived_at))) if len(ex.arrived_at) else t_begin)
            if it + 1 < run.iterations:
                ex.expect_pulls(it + 1)
        ex.wait_until(lambda: (worker is None or ex.pushes_done()) and ex.served_through(it))
        t_end = clock()
        agg = _take_aggregate_span(ex, t_end)
        if worker is not None:
            push = (ex.first_push_at or t_c1, max(ex.last_push_at, ex.first_push_at or t_c1))
        else:               # a server alone: its pull is sending, its push waiting for every worker's
            pull, push = (t_begin, t_begin), (t_begin, agg[0])
        return IterationTimes(pull, data, compute, push, agg, loss, correct)


class _Stale:
    """One step at clock `it` under ssp or asp (the exchange is a hpcps.ps.stale.StaleExchange).

    A worker loads its batch, waits only as long as the policy requires and copies the newest values
    into its parameters (the pull phase), computes (pushing each piece as its gradient completes when
    overlapped), and waits until its pushes have left: the next step reuses the gradient buffer.
    Pulls are not overlapped with the forward pass: the parameters are all in place before it starts.
    A rank that only serves ends its iteration once every worker's push of it is applied."""

    name = ""
    staleness = 0

    def iteration(self, run, it: int, t_begin: float) -> IterationTimes:
        ex, clock, worker = run.exchange, run.clock, run.worker
        nan2 = (math.nan, math.nan)
        data = compute = pull = push = nan2
        loss = math.nan
        correct = 0.0
        if worker is not None:
            t0 = clock()
            batch = worker.load(run.partition.indices(it, run.worker_index))
            data = (t0, clock())
            ex.begin_clock(it)
            pull = (t_begin, clock())
            ex.begin_pushes(it)
            t_c0 = clock()
            loss_t, correct = run.compute(batch)
            t_c1 = clock()
            if not run.overlap:
                _push_all(run)
            compute = (t_c0, t_c1)
            loss = float(loss_t.detach())
            ex.wait_until(ex.pushes_done)
            ex.progress()
            push = (ex.first_push_at or t_c1, max(ex.last_push_at, ex.first_push_at or t_c1))
        else:
            ex.wait_until(lambda: ex.served_through(it))
        t_end = clock()
        agg = _take_aggregate_span(ex, t_end)
        if worker is None:
            pull, push = (t_begin, t_begin), (t_begin, agg[0])
        return IterationTimes(pull, data, compute, push, agg, loss, correct)


class BoundedStaleness(_Stale):
    name = "ssp"

    def __init__(self, staleness: int = 0):
        if not isinstance(staleness, int) or isinstance(staleness, bool) or staleness < 0:
            raise ValueError(f"staleness must be an integer >= 0, got {staleness!r}")
        self.staleness = staleness


class Asynchronous(_Stale):
    name = "asp"


SYNC_POLICIES = {"bsp": BulkSynchronous, "ssp": BoundedStaleness, "asp": Asynchronous}


def make_policy(name: str, staleness: int = 0):
    if name not in SYNC_POLICIES:
        raise ValueError(f"unknown synchronisation {name!r}; choose one of {', '.join(SYNC_POLICIES)}")
    if name == "ssp":
        return BoundedStaleness(staleness)
    if staleness:
        raise ValueError(f"staleness applies to ssp only, got {staleness!r} with {name!r}")
    return SYNC_POLICIES[name]()
