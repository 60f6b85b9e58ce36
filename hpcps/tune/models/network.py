"""The network model: how long the pull and push of one iteration take for a schedule, and the
composition of those with compute and server updates into the time of one synchronous iteration.

Per node type two constants: the NIC's effective bandwidth (bytes/s, per direction) and the message
latency. A message between two nodes completes one latency (the larger of its ends') after its last
byte; messages between ranks of one node are copies and cost nothing here. Flows share NICs:

pull      every server sends its shard to every remote worker at once. A flow can go no faster than
          the busier of its two NICs lets it, so a rank's pull ends when the busiest NIC it exchanges
          with has moved its load: latency + max(own load, its peers' loads) / bandwidth.
push      worker w's slice for server s can move once both have posted (w after its compute, s after
          its own compute if it also works). Each server's NIC serves the slices as they arrive, first
          come first served, which gives the same last finish as fair sharing for equal slices; a
          worker's NIC carries all its slices.
update    then each server aggregates; the iteration ends with the last server's update.

Everything is vectorised over (samples, candidates, nodes) so that the acquisition can score
thousands of schedules under many posterior samples at once. `NetworkModel` fits the two constants
per type to the pull and push times of observed ranks through these same formulas.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from hpcps.cluster.description import Cluster
from hpcps.tune.models.posterior import laplace_cov, laplace_samples

_BIG = 1e30
SAMPLE_JITTER = 1e-12                # on the covariance's diagonal when drawing constants


@dataclass
class Exchange:
    """Times of one iteration, shapes (S, n) or (S, n, N); rank-level ones are 0 where a node does nothing."""
    iteration: np.ndarray          # (S, n) seconds
    pull: np.ndarray               # (S, n, N) seconds a node's pull messages moved
    push: np.ndarray               # (S, n, N) seconds a node's push messages moved once its peers had posted
    ready: np.ndarray              # (S, n, N) when a node posted its push (pull + compute)
    done: np.ndarray               # (S, n, N) when a server had all its pushes (before its update)


def iteration_times(servers: np.ndarray, workers: np.ndarray, compute: np.ndarray, bandwidth: np.ndarray,
                    latency: np.ndarray, aggregate: np.ndarray, model_bytes: float,
                    detail: bool = False) -> np.ndarray | Exchange:
    """Time of one BSP iteration.

    servers, workers: (n, N) bool, per candidate and node. compute, aggregate: (S, n, N) seconds of each
    node's worker step and server update (ignored where the node is not one). bandwidth (bytes/s) and
    latency (s): (S, 1, N) or (S, n, N). Returns (S, n) seconds, or an Exchange with per-node times.
    """
    sv = servers.astype(float)[None]                       # (1, n, N)
    wk = workers.astype(float)[None]
    m = sv.sum(-1, keepdims=True)                          # servers per candidate
    w_count = wk.sum(-1, keepdims=True)
    shard = model_bytes / np.maximum(m, 1.0)
    B = np.broadcast_to(bandwidth, compute.shape)
    L = np.broadcast_to(latency, compute.shape)

    # Pull: loads on each NIC, and the busiest NIC each rank exchanges with.
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
    ready = pull + np.where(wk > 0, compute, 0.0)           # (S, n, N)

    # Push: flow (server s, worker w) for w != s, on arrays (S, n, M, N) over each candidate's servers
    # (M: the most servers of any candidate here), which is far smaller than N x N on big clusters.
    N = servers.shape[-1]
    n = servers.shape[0]
    M = max(1, int(servers.sum(-1).max()))
    srv_idx = np.argsort(~servers, axis=-1, kind="stable")[:, :M]          # (n, M) servers first
    srv_ok = np.take_along_axis(servers, srv_idx, axis=-1)                 # (n, M)
    flow = srv_ok[:, :, None] & workers[:, None, :] & (srv_idx[:, :, None] != np.arange(N)[None, None, :])
    gather = lambda a: np.take_along_axis(a, np.broadcast_to(srv_idx[None], a.shape[:1] + srv_idx.shape), axis=-1)  # noqa: E731
    ready_s, B_s, L_s = gather(ready), gather(B), gather(L)                # (S, n, M)
    arrive = np.maximum(ready_s[..., None], ready[:, :, None, :])          # [s, w]
    arrive = np.where(flow[None], arrive, np.inf)
    c = (np.broadcast_to(shard, B.shape[:2] + (1,)) / B_s)[..., None]      # (S, n, M, 1): a slice through s's NIC
    order = np.argsort(arrive, axis=-1, kind="stable")
    a_sorted = np.take_along_axis(arrive, order, axis=-1)
    valid = np.isfinite(a_sorted)
    idx = np.arange(N, dtype=float)
    fifo = np.maximum.accumulate(np.where(valid, a_sorted - idx * c, -_BIG), axis=-1) + (idx + 1) * c
    # Each worker's own NIC carries one slice per remote server.
    w_out = (remote_servers * shard / B)[:, :, None, :]                   # (S, n, 1, N_w)
    lat_pair = np.maximum(L_s[..., None], L[:, :, None, :])
    own = arrive + w_out
    if detail:
        # Fair sharing slows the early slices of a busy spell down to its end: a slice ends with the
        # busy spell (the run of slices each arriving before the one ahead of it is through) it is in.
        prev = np.concatenate([np.full(fifo.shape[:-1] + (1,), -np.inf), fifo[..., :-1]], axis=-1)
        starts = (a_sorted > prev) | ~valid
        pos = np.where(starts, idx, N)
        next_start = np.minimum.accumulate(np.concatenate([pos[..., 1:], np.full(pos.shape[:-1] + (1,), N)],
                                                          axis=-1)[..., ::-1], axis=-1)[..., ::-1]
        spell_end = np.take_along_axis(fifo, (next_start - 1).astype(int), axis=-1)
        rank_in_queue = np.argsort(order, axis=-1)
        finish = np.maximum(np.take_along_axis(spell_end, rank_in_queue, axis=-1), own) + lat_pair
        finish = np.where(flow[None], finish, -np.inf)
        done_slot = finish.max(-1)                          # (S, n, M)
    else:
        # The queue's last slice ends last (fifo only grows), as does the latest worker's own NIC.
        last = np.maximum(np.where(valid, fifo, -np.inf).max(-1), np.where(flow[None], own, -np.inf).max(-1))
        done_slot = last + np.where(flow[None], lat_pair, -np.inf).max(-1)
    done_remote = np.full(ready.shape, -np.inf)
    S = ready.shape[0]
    np.put_along_axis(done_remote, np.broadcast_to(srv_idx[None], (S, n, M)),
                      np.where(srv_ok[None], done_slot, -np.inf), axis=-1)
    done = np.where(sv > 0, np.maximum(ready, done_remote), 0.0)
    agg = np.where(sv > 0, aggregate, 0.0)
    iteration = np.where(sv > 0, done + agg, 0.0).max(-1)   # (S, n)
    if not detail:
        return iteration

    # Per rank: push moving time = its last message's end less its last peer's post.
    started_w = np.where(flow[None], arrive, -np.inf).max(-2)      # as worker: (S, n, N_w)
    ended_w = finish.max(-2)
    started_s = np.full(ready.shape, -np.inf)                     # as server
    np.put_along_axis(started_s, np.broadcast_to(srv_idx[None], (S, n, M)),
                      np.where(srv_ok[None], np.where(flow[None], arrive, -np.inf).max(-1), -np.inf), axis=-1)
    ended_s = done_remote
    start = np.maximum(started_w, started_s)
    end = np.maximum(ended_w, ended_s)
    with np.errstate(invalid="ignore"):
        push = np.where(np.isfinite(start) & np.isfinite(end), np.maximum(end - start, 0.0), 0.0)
    return Exchange(iteration, pull, push, ready, done)


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

    def fit(self, trials: list[tuple[np.ndarray, np.ndarray, np.ndarray]], model_bytes: float) -> None:
        """trials: per trial (servers (N,) bool, workers (N,) bool, observations). Observed compute
        and update times go in as they were measured, per iteration; pull and push are fitted."""
        N = len(self.cluster)
        batch = _stack(trials, N, max_rows=max(8, int(2e6 / (N * N))))
        if batch is None:
            return
        servers, workers, compute, aggregate, pull_obs, push_obs = batch
        use_pull = pull_obs > 1e-7
        use_push = push_obs > 1e-7
        if not (use_pull.any() or use_push.any()):
            return

        def predict(theta):
            bw, lat = self.node_params(theta)
            ex = iteration_times(servers, workers, compute[None], bw, lat, aggregate[None], model_bytes,
                                 detail=True)
            return ex.pull[0], ex.push[0]

        def residuals(theta):
            p, q = predict(theta)
            r_pull = (np.log(pull_obs[use_pull]) - np.log(np.maximum(p[use_pull], 1e-9))) / self.noise_sd
            r_push = (np.log(push_obs[use_push]) - np.log(np.maximum(q[use_push], 1e-9))) / self.noise_sd
            return np.concatenate([r_pull, r_push, (theta - self.prior_mean) / self.prior_sd])

        theta = self.theta.copy()
        for _ in range(2):   # refit once with the noise level the first fit leaves
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = least_squares(residuals, theta, method="trf", x_scale=1.0, max_nfev=200)
            theta = res.x
            n_data = int(use_pull.sum() + use_push.sum())
            data_r = res.fun[:n_data] * self.noise_sd
            self.noise_sd = float(np.clip(np.sqrt(np.mean(data_r ** 2)) if n_data else 0.3, 0.02, 1.0))
        res_fun = residuals(theta)
        jac = _numeric_jacobian(residuals, theta, res_fun)
        self.theta = theta
        self.cov = laplace_cov(jac)


def _stack(trials, n_nodes: int, max_rows: int | None = None):
    """Per (trial, iteration) rows of the observed schedule and times, as (n, N) arrays; on a cluster so
    big that these would be too many for the fit, per trial (times averaged over its iterations)."""
    per_iteration = max_rows is None or sum(len(np.unique(o["iteration"])) for _, _, o in trials
                                            if o is not None and len(o)) <= max_rows
    rows = []
    for servers, workers, obs in trials:
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
            rows.append((servers, workers, compute, aggregate, pull, push))
    if not rows:
        return None
    if max_rows is not None and len(rows) > max_rows:
        rows = rows[-max_rows:]
    return tuple(np.array([r[i] for r in rows]) for i in range(6))


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
