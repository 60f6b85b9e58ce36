"""The time of one global batch under bounded staleness (ssp) and asynchronous training (asp), composed
from the same per-node step times, NICs and server update times as the bsp composition
(hpcps.tune.models.network.iteration_times), after what the simulator does (hpcps.sim.engine._StaleRun,
docs/sim.md):

- A worker pushes every piece at its step's end and starts its next step once those pushes are through
  (the gradient buffer is reused), so its own cycle is its step, then its push: its slices to the remote
  servers out of its NIC, or its one slice into the slowest server NIC, one latency after the last byte.
  That a server's NIC also takes the other workers' slices is its load, bounded below per round (ssp) or
  per second (asp), not a queue in every push: stale workers do not push at one instant. A worker on a
  server's node under ssp also waits for the round's aggregation (the slowest worker's push is the last
  of its round); under asp its rank applies pushes while the worker steps, which is left out.
- ssp: in steady state every worker goes at the slowest worker's pace (the fast ones at most s clocks
  ahead), so a global batch takes the longest cycle, and at least (aggregation + pull) / s: a worker's
  clock c needs the round c - s - 1 aggregated and pulled, which the round's last push starts s cycles
  earlier; where pulls are slower than a round, a server sends only the newest version once the pull
  before has arrived, so a version waits half a pull more on average. A server's NIC takes in every
  remote worker's push slice each round, and its rank does the round's aggregation: neither can take
  longer than a round either.
- asp: each worker cycles at its own rate 1 / cycle_i, and at least at the pace of its pulls (the
  answers to its pushes come back into its NIC); a global batch of G samples takes
  G / sum_i(batch_i / cycle_i). The servers bound that: each one's NIC takes in every remote worker's
  slice and sends an answer per push, and its rank applies every worker's push on its own (a push's
  share of an aggregation with one worker, plus the decoding). Where one of them would be busier than
  the time it has, every worker's rate is scaled down by that factor (the bottleneck sets the pace).

Left out: queueing at a server NIC or rank that is busy but not saturated (only the mean load counts),
so schedules whose few servers sit on slow NICs come out up to a third fast; under asp the updates that
land in the gap between a co-located worker's steps. tests/unit/test_tune_models.py measures the
composition against the simulator with the true constants.
"""

from __future__ import annotations

import numpy as np


def stale_iteration_times(mode: str, staleness: int, servers: np.ndarray, workers: np.ndarray,
                          compute: np.ndarray, bandwidth: np.ndarray, latency: np.ndarray,
                          aggregate: np.ndarray, apply_one: np.ndarray, pull_bytes: float,
                          batches: np.ndarray, push_bytes: np.ndarray | None = None) -> np.ndarray:
    """Seconds of one global batch (S, n) under mode "ssp" (with staleness >= 1) or "asp".

    servers, workers: (n, N) bool; batches: (n, N) each worker's share of the global batch (0 where
    none). compute, aggregate: (S, n, N) seconds of each node's step and of one round's aggregation of
    its shard (as for iteration_times, codec costs included); apply_one: (S, n, N) seconds a server
    spends applying one worker's push of its shard under asp. bandwidth, latency: (S, 1, N) or (S, n, N).
    pull_bytes: the whole model's bytes as pulls carry them; push_bytes: (n, N) each worker's slice to
    one server (None: pull_bytes / servers).
    """
    if mode not in ("ssp", "asp") or (mode == "ssp" and staleness < 1):
        raise ValueError(f"stale composition of ssp (staleness >= 1) or asp; got {mode!r}, {staleness}")
    sv = servers.astype(float)[None]                       # (1, n, N)
    wk = workers.astype(float)[None]
    m = np.maximum(sv.sum(-1, keepdims=True), 1.0)        # (1, n, 1)
    B = np.broadcast_to(bandwidth, compute.shape)
    L = np.broadcast_to(latency, compute.shape)
    shard = pull_bytes / m                                 # (1, n, 1)
    pb = (shard if push_bytes is None else np.asarray(push_bytes, dtype=float)[None]) * np.ones_like(sv)
    remote_servers = wk * (m - sv)                         # remote slices a worker pushes and pulls
    # Per worker, per server: its slice crosses the network (not its own node's server).
    cross = workers[:, None, :] & servers[:, :, None] & ~np.eye(servers.shape[-1], dtype=bool)[None]  # (n, s, w)
    lat_pair = np.where(cross[None], np.maximum(L[:, :, :, None], L[:, :, None, :]), 0.0)            # (S, n, s, w)
    lat_push = lat_pair.max(-2)                                                                      # (S, n, w)
    out_own = remote_servers * pb / B                      # (S, n, N): the worker's NIC sends its slices
    # What each server's NIC takes in per round: every remote worker's slice.
    in_round = np.einsum("nsw,nw->ns", cross.astype(float), pb[0])[None] / B                         # (S, n, s)
    in_one = np.where(cross[None], pb[0][:, None, :] / B[:, :, :, None], 0.0)                        # (S, n, s, w)
    work = np.where(wk > 0, compute, 0.0)
    # A worker's push: its slices out of its NIC, or its slice into the slowest server NIC; that a
    # server's NIC is shared with the other workers' pushes is its load, bounded below per round (ssp)
    # or per second (asp).
    push = np.where(wk > 0, lat_push + np.maximum(out_own, in_one.max(-2)), 0.0)
    if mode == "ssp":
        # The slowest worker's push ends a round; a server on its node then aggregates before its next step.
        cycle = np.where(wk > 0, work + push + np.where(sv > 0, aggregate, 0.0), 0.0)
        # A round's aggregation and its pull back, which the bound lets take s cycles.
        pull_out = sv * (wk.sum(-1, keepdims=True) - wk) * shard / B              # (S, n, N) per server
        pull_in = remote_servers * shard / B
        pull = np.maximum(np.where(sv > 0, pull_out, 0.0).max(-1, keepdims=True),
                          np.where(wk > 0, pull_in, 0.0).max(-1, keepdims=True)) + lat_push.max(-1, keepdims=True)
        agg = np.where(sv > 0, aggregate, 0.0).max(-1, keepdims=True)
        busiest = np.maximum(in_round.max(-1, keepdims=True), agg)
        period = np.maximum(np.maximum(cycle.max(-1, keepdims=True), (agg + pull) / staleness), busiest)
        # Pulls slower than a round cannot carry every version: a server sends the newest once the pull
        # before has arrived, so a version waits half a pull on average before it leaves.
        skipping = period < pull
        period = np.where(skipping, np.maximum(period, (agg + 1.5 * pull) / staleness), period)
        return period[..., 0]
    # asp
    pull_in = np.where(wk > 0, remote_servers * shard / B + lat_push, 0.0)
    cycle = np.where(wk > 0, np.maximum(work + push, pull_in), np.inf)
    rate = np.where(wk > 0, 1.0 / cycle, 0.0)                                     # (S, n, N) cycles per second
    # Per server: the share of each second its NIC (in and out) and its rank are busy at these rates.
    nic_in = np.einsum("nsw,xnw->xns", cross * pb[0][:, None, :], rate) / B
    nic_out = np.einsum("nsw,xnw->xns", cross.astype(float), rate) * shard / B
    updates = sv * rate.sum(-1, keepdims=True) * apply_one
    load = np.maximum(np.maximum(nic_in, nic_out), updates).max(-1, keepdims=True)
    rate = rate / np.maximum(load, 1.0)
    g = batches.sum(-1, keepdims=True)[None]
    return (g / np.maximum((batches[None] * rate).sum(-1, keepdims=True), 1e-300))[..., 0]
