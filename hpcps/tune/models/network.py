"""The network model: how long the pull and push of one iteration take for a schedule, and the
composition of those with compute and server updates into the time of one synchronous iteration.

Per node type two constants: the NIC's effective bandwidth (bytes/s, per direction) and the message
latency. A message between two nodes completes one latency (the larger of its ends') after its last
byte; messages between ranks of one node are copies and cost nothing here. A slice is one worker's
share of one server's shard. It follows the overlapped runtime (docs/runtime.md), shard by shard:

push      worker w's slice for server s is posted once its gradient is complete, at the step's
          start + compute_w * r_s, where r_s is the ready fraction (hpcps.ps.plan.ready_fractions) of
          the piece at the start of s's shard: servers holding the end of the flat vector get their
          slices first, the first shard's at the end of the step. A server's receives are posted long
          before. Each server's NIC serves its slices as they arrive, and each worker's NIC sends its
          own in the order they are ready, first come first served (the same last finish as fair
          sharing for equal slices). A slice is as many bytes as the worker's codec puts on the wire
          (push_bytes: hpcps.ps.plan's encoded sizes); pulls are as the job's pull codec encodes them.
update    each server updates its shard once all of its slices are in, and, if it also works, after
          its own step.
pull      a server sends its shard to every worker once updated; a worker posts its receives when its
          step ends, and starts its next step when every shard is in. Each slice moves from the later
          of the two; the server's NIC takes the workers in the order their steps end, the worker's
          the shards in the order they are updated, and under fair sharing every slice of a busy spell
          ends with it.

The first iteration is different: every server sends at once at the start. A flow can go no faster
than the busier of its two NICs lets it, so a worker has its shards when the busiest NIC it takes
them from has moved its load. The composition follows ROUNDS iterations from there and answers the
last one's time (from one step's start to the next, the longest of any worker's): one round is the
cold start, the second already what a long run settles to on the clusters tried.

What it leaves out: the pushes of one iteration and the pulls of the next share the NICs of a node
that both serves and works, and a rank's pulls its NIC's other direction; the simulator has them
(hpcps.sim), and schedules whose servers work on slow NICs come out up to a fifth faster here.

Everything is vectorised over (samples, candidates, nodes) so that the acquisition can score
thousands of schedules under many posterior samples at once. `NetworkModel` fits the two constants
per type to the pull and push windows of observed ranks through these same formulas: the last
round's, from when a rank's last message could start (as a trace and the simulator count them), of
nodes that only work.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from hpcps.cluster.description import Cluster
from hpcps.sim.profile import DEFAULT_FORWARD_FRACTION
from hpcps.tune.models.posterior import laplace_cov, laplace_samples

_BIG = 1e30
ROUNDS = 2          # iterations the composition follows from the cold start (see above)
SAMPLE_JITTER = 1e-12                # on the covariance's diagonal when drawing constants


@dataclass
class Exchange:
    """Times of one iteration, shapes (S, n) or (S, n, N); rank-level ones are 0 where a node does nothing."""
    iteration: np.ndarray          # (S, n) seconds
    pull: np.ndarray               # (S, n, N) a node's first pull (the cold start, every shard at once)
    push: np.ndarray               # (S, n, N) its push_s: its last push moving once posted, past its step
    ready: np.ndarray              # (S, n, N) when a node's step ended, last round, from its first step start
    done: np.ndarray               # (S, n, N) when a server had all its pushes (before its update), likewise
    pull_steady: np.ndarray        # (S, n, N) a worker's pull in the last round as a trace and the simulator's
    #                                RankStats count it: from when its last remote shard could start moving
    #                                (its receive posted, the shard updated) until that shard is in


def _max_of_others(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Per node, the largest of values over the other nodes where `where` holds (0 if none); along -1."""
    v = np.where(where, values, 0.0)
    top = v.max(-1, keepdims=True)
    first = np.arange(v.shape[-1]) == v.argmax(-1)[..., None]
    second = np.where(first, 0.0, v).max(-1, keepdims=True)
    return np.where(first, second, top)


def _queue(a: np.ndarray, cost: np.ndarray, spells: bool = False) -> np.ndarray:
    """A NIC per row serving slices that arrive in the order of the last axis (inf: no slice there),
    each taking cost (one per row: last axis of length 1; or one per slice, a's shape): when each slice
    is through (-inf where there is none). First come first served gives the same last finish as fair
    sharing for equal slices; with spells, every slice of a busy spell (a run of slices each arriving
    before the one ahead of it is through) ends with the spell, as under fair sharing."""
    valid = np.isfinite(a)
    # Through times only grow along the row (a place without a slice keeps the one before it's):
    # slice k is through at max over j <= k of (a_j + the costs of slices j..k).
    if np.shape(cost)[-1] == 1:
        count = np.cumsum(valid, axis=-1)
        fifo = np.maximum.accumulate(np.where(valid, a - (count - 1) * cost, -_BIG), axis=-1) + count * cost
    else:
        total = np.cumsum(np.where(valid, cost, 0.0), axis=-1)
        fifo = np.maximum.accumulate(np.where(valid, a - (total - cost), -_BIG), axis=-1) + total
    if spells:
        prev = np.concatenate([np.full(fifo.shape[:-1] + (1,), -np.inf), fifo[..., :-1]], axis=-1)
        starts = valid & (a > prev)
        last = np.concatenate([starts[..., 1:], np.ones(starts.shape[:-1] + (1,), dtype=bool)], axis=-1)
        # A spell's end is the first spell end from here on, the least as they only grow.
        fifo = np.minimum.accumulate(np.where(last, fifo, np.inf)[..., ::-1], axis=-1)[..., ::-1]
    return np.where(valid, fifo, -np.inf)


def iteration_times(servers: np.ndarray, workers: np.ndarray, compute: np.ndarray, bandwidth: np.ndarray,
                    latency: np.ndarray, aggregate: np.ndarray, model_bytes: float,
                    detail: bool = False, forward_fraction: float = DEFAULT_FORWARD_FRACTION,
                    rounds: int = ROUNDS, push_bytes: np.ndarray | None = None) -> np.ndarray | Exchange:
    """Time of one BSP iteration in the steady state.

    servers, workers: (n, N) bool, per candidate and node. compute, aggregate: (S, n, N) seconds of each
    node's worker step and server update (ignored where the node is not one; a codec's encoding and
    decoding included). bandwidth (bytes/s) and latency (s): (S, 1, N) or (S, n, N). forward_fraction:
    the share of a step before gradients appear (1: pushes wait for the end of the step). rounds:
    iterations followed from a start where every worker pulls at once; the last one's time is the
    answer. model_bytes: the whole model's bytes as pulls carry them (the pull codec's; float32 by
    default). push_bytes: (n, N) bytes on the wire of each worker's push to one server, as its codec
    encodes it (None: as big as the pulls, model_bytes / servers). Returns (S, n) seconds, or an
    Exchange with per-node times (of the last round).
    """
    sv = servers.astype(float)[None]                       # (1, n, N)
    wk = workers.astype(float)[None]
    m = sv.sum(-1, keepdims=True)                          # servers per candidate
    w_count = wk.sum(-1, keepdims=True)
    shard = model_bytes / np.maximum(m, 1.0)
    B = np.broadcast_to(bandwidth, compute.shape)
    L = np.broadcast_to(latency, compute.shape)
    S = B.shape[0]
    N = servers.shape[-1]
    n = servers.shape[0]

    # The first pull: every server sends its shard to every remote worker at once. A flow can go no
    # faster than the busier of its two NICs lets it, so a rank's pull ends when the busiest NIC it
    # exchanges with has moved its load. A worker waits only for the shards it receives (its own
    # server's it copies), not for its server's sends.
    remote_servers = wk * (m - sv)                          # shards a worker receives over its NIC
    remote_workers = sv * (w_count - wk)                    # copies a server sends over its NIC
    t_in = remote_servers * shard / B
    t_out = remote_workers * shard / B
    max_out = np.where(sv > 0, t_out, 0.0).max(-1, keepdims=True)
    max_in = np.where(wk > 0, t_in, 0.0).max(-1, keepdims=True)
    lat_servers = np.where(sv > 0, L, 0.0).max(-1, keepdims=True)
    lat_workers = np.where(wk > 0, L, 0.0).max(-1, keepdims=True)
    has_pull = (remote_servers > 0) | (remote_workers > 0)
    pull_lat = np.maximum(L, np.maximum(wk * lat_servers, sv * lat_workers))
    pull = np.where(has_pull, pull_lat + np.maximum(np.maximum(t_in, t_out),
                                                    np.maximum(wk * max_out, sv * max_in)), 0.0)
    pull_in = np.where(remote_servers > 0, np.maximum(L, lat_servers)
                       + np.maximum(t_in, _max_of_others(t_out, sv > 0)), 0.0)
    work = np.where(wk > 0, compute, 0.0)

    # Slices: (server s, worker w) for w != s, on arrays (S, n, M, N) over each candidate's servers
    # (M: the most servers of any candidate here), which is far smaller than N x N on big clusters.
    M = max(1, int(servers.sum(-1).max()))
    srv_idx = np.argsort(~servers, axis=-1, kind="stable")[:, :M]          # (n, M) servers first
    srv_ok = np.take_along_axis(servers, srv_idx, axis=-1)                 # (n, M)
    own_server = srv_idx[:, :, None] == np.arange(N)[None, None, :]        # (n, M, N)
    flow = (srv_ok[:, :, None] & workers[:, None, :] & ~own_server)[None]
    local = (srv_ok[:, :, None] & workers[:, None, :] & own_server)[None]
    gather = lambda a: np.take_along_axis(a, np.broadcast_to(srv_idx[None], a.shape[:1] + srv_idx.shape), axis=-1)  # noqa: E731
    B_s, L_s = gather(B), gather(L)                                        # (S, n, M)
    # Shard i of m starts at i / m of the flat vector; its slice is complete at that point's fraction.
    position = np.arange(M)[None, :] / np.maximum(servers.sum(-1, keepdims=True), 1)      # (n, M)
    r = forward_fraction + (1.0 - forward_fraction) * (1.0 - position)
    into = work[:, :, None, :] * r[None, :, :, None]                       # (S, n, M, N) from a step's start
    sh = np.broadcast_to(shard, B.shape[:2] + (1,))
    c = (sh / B_s)[..., None]                                              # (S, n, M, 1): a slice through s's NIC
    c_w_last = (sh / B)[..., None]                                         # (S, n, N, 1): a slice through w's NIC
    if push_bytes is None:          # pushes as big as pulls
        c_push, c_w_push = c, c_w_last
    else:
        pb = np.asarray(push_bytes, dtype=float)[None]                     # (1, n, N)
        c_push = np.broadcast_to(pb[:, :, None, :] / B_s[..., None], B_s.shape + (N,))   # (S, n, M, N): w's slice at s
        c_w_push = (pb / B)[..., None]                                     # (S, n, N, 1)
    lat_pair = np.maximum(L_s[..., None], L[:, :, None, :])
    agg = np.where(sv > 0, aggregate, 0.0)

    # Follow `rounds` iterations from a start where every worker pulls at once. start: when each
    # worker's step starts.
    start = pull_in
    for _ in range(max(1, rounds)):
        ready = np.where(wk > 0, start + work, 0.0)            # (S, n, N) a worker's step ends
        arrive = np.where(flow, start[:, :, None, :] + into, np.inf)       # [s, w]: a push is posted
        # A worker's NIC sends its slices in the order they are ready, the last shard's first, sharing
        # itself among those that overlap.
        at_worker = np.moveaxis(_queue(np.moveaxis(arrive[:, :, ::-1, :], 2, -1), c_w_push, True),
                                -1, 2)[:, :, ::-1, :]
        if detail:
            order = np.argsort(arrive, axis=-1)
            at_server = np.empty(arrive.shape)
            cost = c if push_bytes is None else np.take_along_axis(c_push, order, -1)
            np.put_along_axis(at_server, order, _queue(np.take_along_axis(arrive, order, -1), cost, True), axis=-1)
            finish = np.where(flow, np.maximum(at_server, at_worker) + lat_pair, -np.inf)
            done_slot = finish.max(-1)
        else:     # only each server's last slice matters: the queue's last, and the workers' NICs
            if push_bytes is None:
                at_server_last = _queue(np.sort(arrive, axis=-1), c).max(-1)
            else:
                order = np.argsort(arrive, axis=-1)
                at_server_last = _queue(np.take_along_axis(arrive, order, -1),
                                        np.take_along_axis(c_push, order, -1)).max(-1)
            done_slot = np.maximum(at_server_last, at_worker.max(-1)) + np.where(flow, lat_pair, -np.inf).max(-1)
        done_remote = _scatter(done_slot, srv_idx, srv_ok, (S, n, N))
        # A server that also works updates after its own step.
        done = np.where(sv > 0, np.maximum(ready, done_remote), 0.0)
        updated = gather(np.where(sv > 0, done + agg, -np.inf))[..., None]  # (S, n, M, 1)
        # The next pulls: a worker posts its receives when its step ends, and a server sends its shard
        # to every worker once updated: each slice moves from the later of the two. A server's NIC
        # takes the workers in the order their steps end, a worker's the shards in the order they are
        # updated: the slices are laid out in those orders (rather than gathered, which is slow).
        by_ready = np.argsort(ready, axis=-1)                               # (S, n, N)
        node = by_ready[:, :, None, :]
        rows = np.arange(n)[None, :, None]
        sent = np.where(srv_ok[None, :, :, None] & workers[rows, by_ready][:, :, None, :]
                        & (srv_idx[None, :, :, None] != node),
                        np.maximum(np.take_along_axis(ready, by_ready, -1)[:, :, None, :], updated), np.inf)
        lat_w = np.take_along_axis(L, by_ready, -1)[:, :, None, :]
        at_server = _queue(sent, c, True) + np.maximum(L_s[..., None], lat_w)
        from_servers = np.full((S, n, N), -np.inf)                          # per worker, its last shard
        np.put_along_axis(from_servers, by_ready, at_server.max(-2), axis=-1)
        by_update = np.argsort(updated[..., 0], axis=-1)                    # (S, n, M)
        slot = np.take_along_axis(np.broadcast_to(srv_idx[None], by_update.shape), by_update, -1)
        ok = np.take_along_axis(np.broadcast_to(srv_ok[None], by_update.shape), by_update, -1)
        upd = np.take_along_axis(updated[..., 0], by_update, -1)
        got = np.where(ok[..., None] & workers[None, :, None, :] & (slot[..., None] != np.arange(N)),
                       np.maximum(ready[:, :, None, :], upd[..., None]), np.inf)            # (S, n, M, N)
        lat_s = np.take_along_axis(L_s, by_update, -1)
        into_worker = _queue(np.moveaxis(got, 2, -1), c_w_last).max(-1) + \
            np.where(np.isfinite(got), np.maximum(lat_s[..., None], L[:, :, None, :]), -np.inf).max(-2)
        pulled = np.maximum(from_servers, into_worker)
        copied = np.where(local, np.maximum(ready[:, :, None, :], updated), -np.inf)
        previous, start = start, np.maximum(pulled, copied.max(-2))
        start = np.where(wk > 0, np.maximum(start, ready), 0.0)
    iteration = np.where(wk > 0, start - previous, 0.0).max(-1)             # (S, n)
    if not detail:
        return iteration

    # Per node, what a rank's breakdown calls pull and push: the time its messages moved once their
    # last one could start, less what its step hides (hpcps.sim RankStats). Pull: the first one.
    pull_seen = np.where(wk > 0, pull_in + np.maximum(pull - pull_in - work, 0.0), pull)
    started_w = np.where(flow, arrive, -np.inf).max(-2)             # as worker: (S, n, N)
    started_s = _scatter(np.where(flow, arrive, -np.inf).max(-1), srv_idx, srv_ok, (S, n, N))   # as server
    begun = np.maximum(np.maximum(started_w, started_s), np.where(wk > 0, ready, -np.inf))
    end = np.maximum(finish.max(-2), done_remote)
    with np.errstate(invalid="ignore"):
        push = np.where(np.isfinite(begun) & np.isfinite(end), np.maximum(end - begun, 0.0), 0.0)
    origin = np.where(wk > 0, previous, np.inf).min(-1, keepdims=True)
    # A worker's pull as a trace counts it: from when its last remote shard could start moving (its
    # receive posted, the shard updated; `got`, the last round's) until the shards are in.
    last_start = np.where(np.isfinite(got), got, -np.inf).max(-2)            # (S, n, N)
    with np.errstate(invalid="ignore"):
        steady = np.where(np.isfinite(last_start), np.maximum(pulled - last_start, 0.0), 0.0)
    return Exchange(iteration, pull_seen, push, np.where(wk > 0, ready - origin, 0.0),
                    np.where(sv > 0, done - origin, 0.0), np.where(wk > 0, steady, 0.0))


def _scatter(values: np.ndarray, srv_idx: np.ndarray, srv_ok: np.ndarray, shape: tuple) -> np.ndarray:
    """(S, n, M) per server slot -> (S, n, N) per node (-inf where a node serves nothing)."""
    out = np.full(shape, -np.inf)
    np.put_along_axis(out, np.broadcast_to(srv_idx[None], values.shape), np.where(srv_ok[None], values, -np.inf),
                      axis=-1)
    return out


class NetworkModel:
    """Effective NIC bandwidth and message latency per node type, fitted to observed pull and push times.

    The cluster file's nic_gbps and latency_us are the prior (log-normal, so the data overrides them);
    a type never seen keeps its prior. Parameters: log bandwidth and log latency per type."""

    PRIOR_SD_BANDWIDTH = 0.7
    PRIOR_SD_LATENCY = 1.0

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.types = cluster.types
        self.node_type = np.array([[t.name for t in cluster.types].index(n.type.name) for n in cluster.nodes])
        self.prior_mean = np.concatenate([np.log([t.nic_bytes_per_s for t in self.types]),
                                          np.log([t.latency_us * 1e-6 + 1e-6 for t in self.types])])
        self.prior_sd = np.concatenate([np.full(len(self.types), self.PRIOR_SD_BANDWIDTH),
                                        np.full(len(self.types), self.PRIOR_SD_LATENCY)])
        self.theta = self.prior_mean.copy()
        self.cov = np.diag(self.prior_sd ** 2)
        self.noise_sd = 0.3

    def node_params(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """theta (S, P) -> bandwidth, latency per node, each (S, 1, N)."""
        theta = np.atleast_2d(theta)
        J = len(self.types)
        bw = np.exp(theta[:, :J])[:, self.node_type][:, None, :]
        lat = np.exp(theta[:, J:])[:, self.node_type][:, None, :]
        return bw, lat

    def samples(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, P) draws from the Laplace posterior; the first is the fit itself."""
        return laplace_samples(self.theta, self.cov, n, rng, SAMPLE_JITTER)

    def fit(self, trials: list[tuple], model_bytes: float) -> None:
        """trials: per trial (servers (N,) bool, workers (N,) bool, observations), and where workers push
        encoded (a codec), a fourth: push bytes (N,) per worker and server as in iteration_times. Observed
        compute and update times go in as they were measured, per iteration; pull and push are fitted."""
        N = len(self.cluster)
        batch = _stack(trials, N, max_rows=max(8, int(2e6 / (N * N))))
        if batch is None:
            return
        servers, workers, compute, aggregate, pull_obs, push_obs, push_bytes = batch
        # Fitted: the windows of nodes that only work, as the last round composes them (pull_steady; the
        # observations leave out the start-up iteration). A node that serves moves its shard's slices
        # in its rank's background (the overlapped runtime: a trace's windows there hold only its own
        # worker's local copies), so its windows say nothing of its NIC. Fitted to the first pull's
        # windows and to serving nodes' as well, the simulator's own trials came out at 5-26x its NICs.
        serve = servers.astype(bool)
        use_pull = (pull_obs > 1e-7) & ~serve
        use_push = (push_obs > 1e-7) & ~serve
        if not (use_pull.any() or use_push.any()):
            return

        def predict(theta):
            bw, lat = self.node_params(theta)
            ex = iteration_times(servers, workers, compute[None], bw, lat, aggregate[None], model_bytes,
                                 detail=True, push_bytes=push_bytes)
            return ex.pull_steady[0], ex.push[0]

        def log_errors(theta):
            p, q = predict(theta)
            return np.concatenate([np.log(pull_obs[use_pull]) - np.log(np.maximum(p[use_pull], 1e-9)),
                                   np.log(push_obs[use_push]) - np.log(np.maximum(q[use_push], 1e-9))])

        def residuals(theta):
            # Pseudo-Huber on the windows (quadratic within a noise level, linear past it): a window far
            # off the composition (a push that met no queue where its peers did, one iteration's burst)
            # weighs like a few, not like its square. The prior stays quadratic.
            r = log_errors(theta) / self.noise_sd
            robust = np.sign(r) * np.sqrt(2.0 * (np.sqrt(1.0 + r * r) - 1.0))
            return np.concatenate([robust, (theta - self.prior_mean) / self.prior_sd])

        theta = self.theta.copy()
        for _ in range(2):   # refit once with the noise level the first fit leaves
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = least_squares(residuals, theta, method="trf", x_scale=1.0, max_nfev=200)
            theta = res.x
            e = log_errors(theta)
            # The typical spread, robustly: 1.4826 x the median absolute deviation (the sd of normal errors).
            self.noise_sd = float(np.clip(1.4826 * np.median(np.abs(e - np.median(e))) if len(e) else 0.3,
                                          0.02, 1.0))
        res_fun = residuals(theta)
        jac = _numeric_jacobian(residuals, theta, res_fun)
        self.theta = theta
        self.cov = laplace_cov(jac)


def _stack(trials, n_nodes: int, max_rows: int | None = None):
    """Per (trial, iteration) rows of the observed schedule and times, as (n, N) arrays, and the push
    bytes per node where the trials give them (else None); on a cluster so big that these would be too
    many for the fit, per trial (times averaged over its iterations)."""
    trials = [tuple(t) + (None,) * (4 - len(t)) for t in trials]
    per_iteration = max_rows is None or sum(len(np.unique(o["iteration"])) for _, _, o, _ in trials
                                            if o is not None and len(o)) <= max_rows
    rows = []
    for servers, workers, obs, push_bytes in trials:
        if obs is None or len(obs) == 0:
            continue
        groups = [obs[obs["iteration"] == it] for it in np.unique(obs["iteration"])] if per_iteration else \
            [_mean_over_iterations(obs)]
        for o in groups:
            compute = np.zeros(n_nodes)
            aggregate = np.zeros(n_nodes)
            pull = np.zeros(n_nodes)
            push = np.zeros(n_nodes)
            # One worker per node in the search space; sum where a node runs several ranks.
            np.add.at(compute, o["node"], o["compute_s"])
            np.add.at(aggregate, o["node"], o["aggregate_s"])
            np.maximum.at(pull, o["node"], o["pull_s"])
            np.maximum.at(push, o["node"], o["push_s"])
            rows.append((servers, workers, compute, aggregate, pull, push, push_bytes))
    if not rows:
        return None
    if max_rows is not None and len(rows) > max_rows:
        rows = rows[-max_rows:]
    given = [r[6] is not None for r in rows]
    if any(given) and not all(given):
        raise ValueError("give push bytes for every trial or for none")
    return tuple(np.array([r[i] for r in rows]) for i in range(6)) + \
        (np.array([r[6] for r in rows]) if all(given) else None,)


def _mean_over_iterations(obs: np.ndarray) -> np.ndarray:
    """One row per rank: its times averaged over the iterations observed."""
    ranks, inv = np.unique(obs["rank"], return_inverse=True)
    inv = inv.reshape(-1)
    out = obs[np.unique(inv, return_index=True)[1]].copy()
    count = np.bincount(inv).astype(float)
    for f in ("compute_s", "pull_s", "push_s", "aggregate_s"):
        out[f] = np.bincount(inv, obs[f]) / count
    return out


def _numeric_jacobian(fun, x: np.ndarray, f0: np.ndarray, step: float = 1e-4) -> np.ndarray:
    jac = np.empty((len(f0), len(x)))
    for i in range(len(x)):
        dx = np.zeros_like(x)
        dx[i] = step
        jac[:, i] = (fun(x + dx) - f0) / step
    return jac
