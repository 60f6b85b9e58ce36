"""A discrete-event simulation of synchronous (BSP) parameter-server training on a cluster.

It follows what hpcps.ps.runtime and hpcps.ps.exchange do, rank by rank:

    pull     every server sends its shard to every worker; a rank waits for all it posted, as sender
             and as receiver (a server that is also a worker computes only after its sends are done)
    compute  workers only: the calibrated step time on their node
    push     every worker sends each shard's slice of its gradient to that shard's server
    update   servers only: weighted sum of the pushes and the optimiser step, then the next pull

A message starts moving when both sides have posted it (the rendezvous of large MPI messages), moves
as a fluid flow that shares its source NIC's outbound and its destination NIC's inbound bandwidth with
every other flow there (max-min fair, or equal shares), and completes one latency after its last
byte. Between two ranks of one node it is a memory copy and never touches the NIC. Rates are
recomputed whenever a flow starts or ends. See docs/sim.md.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import RankPlacement
from hpcps.ps.sharding import plan_shards
from hpcps.sim.network import SHARING, flow_rates
from hpcps.sim.profile import MachineProfile, WorkloadProfile

# A message between two ranks of one node: shared-memory latency, not the NIC's.
LOCAL_LATENCY_S = 1e-6
AUTO_RESOLUTION = 1e-3         # of the median worker step, when SimOptions.resolution_s is None
BYTES_PER_ELEMENT = 4          # float32 parameters and gradients

PULL, PUSH = 0, 1
_POST, _DONE = 0, 1            # event kinds


@dataclass(frozen=True)
class SimOptions:
    iterations: int = 5
    noise_sigma: float = 0.0           # lognormal sigma of a multiplicative, mean-one factor on compute
    straggler_prob: float = 0.0        # chance that a worker's step is a straggler's, per iteration
    straggler_slowdown: float = 3.0    # how much slower a straggling step is
    seed: int = 0
    sharing: str = "maxmin"            # "maxmin" or "equal" (see hpcps.sim.network)
    # Events this close together are handled together, up to resolution_s early: it bounds the rate
    # recomputations per iteration when thousands of ranks finish at scattered times. None: a
    # thousandth of the median worker step; 0: exact.
    resolution_s: float | None = None
    optimizer: str = "sgd"             # the server's update cost depends on it

    def check(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not (self.noise_sigma >= 0 and math.isfinite(self.noise_sigma)):
            raise ValueError(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        if not 0 <= self.straggler_prob <= 1:
            raise ValueError(f"straggler_prob must be in [0, 1], got {self.straggler_prob}")
        if not (self.straggler_slowdown >= 1 and math.isfinite(self.straggler_slowdown)):
            raise ValueError(f"straggler_slowdown must be >= 1, got {self.straggler_slowdown}")
        if self.sharing not in SHARING:
            raise ValueError(f"sharing must be one of {', '.join(SHARING)}, got {self.sharing!r}")
        if self.resolution_s is not None and not self.resolution_s >= 0:
            raise ValueError(f"resolution_s must be >= 0, got {self.resolution_s}")


@dataclass(frozen=True)
class RankStats:
    """Seconds per iteration, averaged over the simulated iterations. pull_s and push_s are the time a
    rank's messages were moving once every peer had posted; waiting for peers to post, and idling after
    the rank's last iteration until the slowest rank's, is wait_s. The five add up to the iteration time."""
    rank: int
    node: str
    server: bool
    batch: int                         # 0: not a worker
    threads: int
    compute_s: float
    pull_s: float
    push_s: float
    aggregate_s: float
    wait_s: float


@dataclass(frozen=True)
class SimResult:
    status: str                        # "ok", or why the schedule cannot run
    iteration_time_s: float            # mean over iterations; inf when status is not "ok"
    iteration_times_s: tuple[float, ...] = ()
    ranks: tuple[RankStats, ...] = ()
    global_batch: int = 0
    n_servers: int = 0
    n_workers: int = 0
    bytes_per_iteration: float = 0.0   # over the NICs (node-local copies excluded)
    events: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def feasible(self) -> bool:
        return self.status == "ok"

    @property
    def samples_per_s(self) -> float:
        return self.global_batch / self.iteration_time_s if self.feasible else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ranks"] = [asdict(r) for r in self.ranks]
        d["iteration_times_s"] = list(self.iteration_times_s)
        d["notes"] = list(self.notes)
        d["feasible"] = self.feasible
        d["samples_per_s"] = self.samples_per_s
        if not self.feasible:
            d["iteration_time_s"] = None     # JSON has no infinity
        return d


def memory_needed(cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile,
                  machine: MachineProfile) -> np.ndarray:
    """Bytes each node needs: per rank the idle footprint; per worker its parameters and gradients
    (the flat buffers) and activations for its batch; per server its shard, the shard's gradient and
    optimiser state and a receive row per worker. Shape (n_nodes,)."""
    sched = placement.schedule
    need = np.zeros(len(cluster))
    for node in placement.rank_nodes:
        need[cluster.index(node)] += machine.rank_overhead_bytes
    for w in sched.workers:
        need[cluster.index(placement.rank_nodes[w.rank])] += (
            2 * BYTES_PER_ELEMENT * profile.params + w.batch * profile.activation_bytes_per_sample)
    for s in plan_shards(profile.params, sched.servers):
        need[cluster.index(placement.rank_nodes[s.server])] += BYTES_PER_ELEMENT * s.size * (3 + len(sched.workers))
    return need


def check_memory(cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile,
                 machine: MachineProfile) -> str:
    """'ok', or which node runs out of memory and by how much."""
    need = memory_needed(cluster, placement, profile, machine)
    for i, node in enumerate(cluster.nodes):
        if need[i] > node.type.memory_bytes:
            ranks = [r for r, n in enumerate(placement.rank_nodes) if n == node.name]
            batches = [w.batch for w in placement.schedule.workers if w.rank in ranks]
            return (f"out of memory on node {node.name} (type {node.type.name}, memory_gb = {node.type.memory_gb}): "
                    f"its {len(ranks)} rank(s) with worker batches {batches} need about {need[i] / 1e9:.2f} GB")
    return "ok"


def compute_times(cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile) -> np.ndarray:
    """Seconds of one step for each worker (schedule order), without noise. Workers on one node share
    its cores: past the cores, each gets its share of them and the oversubscription cost."""
    sched = placement.schedule
    node_threads: dict[str, int] = {}
    for w in sched.workers:
        node = placement.rank_nodes[w.rank]
        node_threads[node] = node_threads.get(node, 0) + w.threads
    out = np.empty(len(sched.workers))
    for i, w in enumerate(sched.workers):
        name = placement.rank_nodes[w.rank]
        t = cluster.node(name).type
        out[i] = (profile.step_time(w.batch, w.threads, t.cores, node_threads[name]) / t.speed
                  + t.fixed_ms / 1e3)
    return out


def simulate(cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile, machine: MachineProfile,
             options: SimOptions = SimOptions()) -> SimResult:
    """Simulate options.iterations BSP iterations of placement on cluster. Infeasible schedules (a node
    out of memory) come back with status saying why and an infinite iteration time."""
    options.check()
    sched = placement.schedule
    if len(placement.rank_nodes) < sched.n_ranks_needed:
        raise ValueError(f"placement names nodes for {len(placement.rank_nodes)} ranks, the schedule needs "
                         f"{sched.n_ranks_needed}")
    status = check_memory(cluster, placement, profile, machine)
    common = dict(global_batch=sched.global_batch, n_servers=len(sched.servers), n_workers=len(sched.workers),
                  notes=(profile.note,) if profile.note else ())
    if status != "ok":
        return SimResult(status, math.inf, **common)
    return _Run(cluster, placement, profile, machine, options).run(common)


class _Run:
    """One simulation's state. Flows are numbered by a template (every pull and push message of one
    iteration) and an iteration: flow id = iteration * n_template + template index."""

    def __init__(self, cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile,
                 machine: MachineProfile, options: SimOptions):
        self.opt = options
        sched = placement.schedule
        n_ranks = len(placement.rank_nodes)
        self.n_ranks = n_ranks
        self.n_nodes = len(cluster)
        node_of = np.array([cluster.index(n) for n in placement.rank_nodes], dtype=np.int64)
        types = [n.type for n in cluster.nodes]
        self.capacity = np.array([t.nic_bytes_per_s for t in types] * 2)   # egress 0..n-1, ingress n..2n-1
        latency = np.array([t.latency_us * 1e-6 for t in types])
        speed = np.array([t.speed for t in types])
        self.placement = placement

        self.worker_ranks = np.array([w.rank for w in sched.workers], dtype=np.int64)
        self.worker_of_rank = np.full(n_ranks, -1, dtype=np.int64)
        self.worker_of_rank[self.worker_ranks] = np.arange(len(sched.workers))
        self.is_server = np.zeros(n_ranks, dtype=bool)
        self.is_server[list(sched.servers)] = True

        # Messages of one iteration. Empty shards move nothing, as in the exchange.
        shards = [s for s in plan_shards(profile.params, sched.servers) if s.size > 0]
        n_w, n_s = len(self.worker_ranks), len(shards)
        srv = np.repeat(np.array([s.server for s in shards], dtype=np.int64), n_w)
        nbytes = np.repeat(np.array([BYTES_PER_ELEMENT * s.size for s in shards], dtype=np.float64), n_w)
        wrk = np.tile(self.worker_ranks, n_s)
        self.src = np.concatenate([srv, wrk])
        self.dst = np.concatenate([wrk, srv])
        self.bytes = np.concatenate([nbytes, nbytes])
        self.phase = np.concatenate([np.full(n_w * n_s, PULL), np.full(n_w * n_s, PUSH)])
        self.n_template = len(self.src)
        sn, dn = node_of[self.src], node_of[self.dst]
        self.local = sn == dn
        self.local_time = np.where(self.src == self.dst, 0.0, LOCAL_LATENCY_S) + self.bytes / machine.memcpy_bytes_per_s
        self.latency = np.maximum(latency[sn], latency[dn])
        self.res_src, self.res_dst = sn, self.n_nodes + dn

        # For each phase and rank, the messages it takes part in (a copy to itself counts once).
        self.by_rank = []
        self.requests = np.zeros((2, n_ranks), dtype=np.int64)
        for ph in (PULL, PUSH):
            idx = np.flatnonzero(self.phase == ph)
            self_copy = self.src[idx] == self.dst[idx]
            ends = np.concatenate([self.src[idx], self.dst[idx][~self_copy]])
            flows = np.concatenate([idx, idx[~self_copy]])
            order = np.argsort(ends, kind="stable")
            bounds = np.searchsorted(ends[order], np.arange(n_ranks + 1))
            self.by_rank.append((flows[order], bounds))
            self.requests[ph] = np.diff(bounds)

        # Work: steps per (iteration, worker) with noise and stragglers drawn up front, seeded.
        base = compute_times(cluster, placement, profile)
        rng = np.random.default_rng(options.seed)
        iters = options.iterations
        factor = np.ones((iters, n_w))
        if options.noise_sigma > 0:
            s = options.noise_sigma
            factor *= rng.lognormal(-s * s / 2, s, size=(iters, n_w))     # mean one
        if options.straggler_prob > 0:
            factor *= np.where(rng.random((iters, n_w)) < options.straggler_prob, options.straggler_slowdown, 1.0)
        self.compute = base[None, :] * factor
        self.resolution = (AUTO_RESOLUTION * float(np.median(base)) if options.resolution_s is None
                           else options.resolution_s)
        per_byte = (machine.aggregate_s_per_byte_per_worker * n_w + machine.update_cost(options.optimizer))
        self.aggregate = np.zeros(n_ranks)
        for s in shards:
            self.aggregate[s.server] += per_byte * BYTES_PER_ELEMENT * s.size / speed[node_of[s.server]]
        self.network_bytes = float(self.bytes[~self.local].sum())

    # -- the event loop -------------------------------------------------------------------------------

    def run(self, common: dict) -> SimResult:
        iters, R = self.opt.iterations, self.n_ranks
        self.posted = np.full((iters, 2, R), np.nan)
        self.ended = np.full((iters, 2, R), np.nan)
        self.last_start = np.full((iters, 2, R), -np.inf)
        self.outstanding = np.repeat(self.requests[None, :, :], iters, axis=0).copy()
        self.finished = np.full((iters, R), np.nan)
        self.heap: list = []
        self.seq = 0
        # Flows on the NICs: id, bytes left, NIC resources, rate (kept side by side, in step).
        self.a_id = np.empty(0, np.int64)
        self.a_left = np.empty(0)
        self.a_src = np.empty(0, np.int64)
        self.a_dst = np.empty(0, np.int64)
        self.a_rate = np.empty(0)
        self.now = 0.0
        events = 0
        ranks = set(self.worker_ranks.tolist()) | set(np.flatnonzero(self.is_server).tolist())
        for r in sorted(ranks):
            self._push_event(0.0, _POST, (0, PULL, r))

        while self.heap or self.a_id.size:
            t_event = self.heap[0][0] if self.heap else math.inf
            t_flow = math.inf
            if self.a_id.size:
                t_flow = self.now + float(np.min(self.a_left / self.a_rate))
            t = min(t_event, t_flow)
            if self.a_id.size:
                self.a_left -= self.a_rate * (t - self.now)
            self.now = t
            tol = max(self.resolution, 1e-9 * t, 1e-15)
            changed = False
            if self.a_id.size:
                done = self.a_left <= self.a_rate * tol
                if done.any():
                    self._drained(self.a_id[done])
                    keep = ~done
                    self.a_id, self.a_left = self.a_id[keep], self.a_left[keep]
                    self.a_src, self.a_dst = self.a_src[keep], self.a_dst[keep]
                    changed = True
            while self.heap and self.heap[0][0] <= self.now + tol:
                _, _, kind, payload = heapq.heappop(self.heap)
                events += 1
                if kind == _POST:
                    changed |= self._post(*payload)
                else:
                    self._complete(*payload)
            if changed and self.a_id.size:
                self.a_rate = flow_rates(self.a_src, self.a_dst, self.capacity, self.opt.sharing)
        return self._result(common, events)

    def _push_event(self, t: float, kind: int, payload) -> None:
        heapq.heappush(self.heap, (t, self.seq, kind, payload))
        self.seq += 1

    def _post(self, k: int, ph: int, r: int) -> bool:
        """Rank r enters phase ph of iteration k. Returns whether flows joined the NICs."""
        t = self.now
        self.posted[k, ph, r] = t
        if self.outstanding[k, ph, r] == 0:         # nothing to move (a server of an empty shard)
            self._phase_end(k, ph, r)
            return False
        flows, bounds = self.by_rank[ph]
        idx = flows[bounds[r]:bounds[r + 1]]
        other = self.src[idx] + self.dst[idx] - r
        ready = ~np.isnan(self.posted[k, ph, other])
        idx, other = idx[ready], other[ready]
        if idx.size == 0:
            return False
        # r posted last, so these start now: r waited for nobody, each peer waited for r.
        self.last_start[k, ph, r] = t
        np.maximum.at(self.last_start[k, ph], other, t)
        local = self.local[idx]
        if local.any():
            li = idx[local]
            ends = t + self.local_time[li]
            for end in np.unique(ends):
                self._push_event(float(end), _DONE, (k, li[ends == end]))
        net = idx[~local]
        if net.size:
            self.a_id = np.concatenate([self.a_id, k * self.n_template + net])
            self.a_left = np.concatenate([self.a_left, self.bytes[net]])
            self.a_src = np.concatenate([self.a_src, self.res_src[net]])
            self.a_dst = np.concatenate([self.a_dst, self.res_dst[net]])
            return True
        return False

    def _drained(self, ids: np.ndarray) -> None:
        """Flows whose last byte left now: they complete one latency later."""
        tmpl = ids % self.n_template
        ends = self.now + self.latency[tmpl]
        for end in np.unique(ends):
            sel = ends == end
            for k in np.unique(ids[sel] // self.n_template):
                self._push_event(float(end), _DONE, (int(k), tmpl[sel & (ids // self.n_template == k)]))

    def _complete(self, k: int, tmpl: np.ndarray) -> None:
        """Messages done: each end has one request fewer; a rank with none left ends its phase."""
        for ph in (PULL, PUSH):
            sel = tmpl[self.phase[tmpl] == ph]
            if sel.size == 0:
                continue
            ends = np.concatenate([self.src[sel], self.dst[sel][self.src[sel] != self.dst[sel]]])
            touched, counts = np.unique(ends, return_counts=True)
            self.outstanding[k, ph, touched] -= counts
            for r in touched[self.outstanding[k, ph, touched] == 0]:
                self._phase_end(k, ph, int(r))

    def _phase_end(self, k: int, ph: int, r: int) -> None:
        t = self.now
        self.ended[k, ph, r] = t
        if ph == PULL:
            w = self.worker_of_rank[r]
            self._push_event(t + (self.compute[k, w] if w >= 0 else 0.0), _POST, (k, PUSH, r))
        else:
            done = t + self.aggregate[r]
            self.finished[k, r] = done
            if k + 1 < self.opt.iterations:
                self._push_event(done, _POST, (k + 1, PULL, r))

    # -- results --------------------------------------------------------------------------------------

    def _result(self, common: dict, events: int) -> SimResult:
        iters = self.opt.iterations
        active = ~np.isnan(self.finished[0])
        if np.isnan(self.finished[:, active]).any():
            raise RuntimeError("simulation ended with ranks still in an iteration (a bug in the simulator)")
        ends = np.nanmax(self.finished, axis=1)                 # (iters,)
        times = np.diff(np.concatenate([[0.0], ends]))
        total = float(ends[-1])
        sched = self.placement.schedule
        stats = []
        for r in np.flatnonzero(active):
            w = self.worker_of_rank[r]
            spec = sched.workers[w] if w >= 0 else None
            phase_s = np.nan_to_num(self.ended[:, :, r] - self.posted[:, :, r])             # (iters, 2)
            waited = np.clip(self.last_start[:, :, r] - self.posted[:, :, r], 0, phase_s)
            moving = phase_s - waited
            compute = float(self.compute[:, w].sum()) if w >= 0 else 0.0
            aggregate = float(self.aggregate[r]) * iters
            busy = compute + moving.sum() + aggregate
            stats.append(RankStats(int(r), self.placement.rank_nodes[r], bool(self.is_server[r]),
                                   spec.batch if spec else 0, spec.threads if spec else 0,
                                   compute / iters, float(moving[:, PULL].sum()) / iters,
                                   float(moving[:, PUSH].sum()) / iters, aggregate / iters,
                                   max(0.0, float(total - busy)) / iters))
        return SimResult("ok", total / iters, tuple(float(x) for x in times), tuple(stats),
                         bytes_per_iteration=self.network_bytes, events=events, **common)
