"""A discrete-event simulation of parameter-server training on a cluster: bulk-synchronous (bsp), as
below, and with bounded staleness (ssp) or asynchronous (asp) as the emulation runs them (_StaleRun).

It follows what hpcps.ps.runtime and hpcps.ps.exchange do with an overlapped run, message by message.
The messages are those of the run's message plan (hpcps.ps.plan.MessagePlan): the flat parameter
vector cut into one shard per server and each shard into pieces of at most the job's bucket size,
one pull and one push per piece and worker.

    pull     a server sends a piece's new values to every worker as soon as it has updated the piece;
             a worker posts its receives of the next iteration's pieces when its step ends, and
             starts the next step once every piece has arrived
    compute  workers only: the calibrated step time on their node
    push     a worker posts a piece's push as soon as the backward pass has produced its gradient:
             at step start + step time x the piece's ready fraction (hpcps.ps.plan.ready_fractions,
             with the workload profile's forward fraction), so pieces go out from the end of the
             vector to its start while the step goes on
    update   a server aggregates a piece and steps the optimiser on it as soon as every worker's push
             of it is in; one piece at a time, and on a rank that is also a worker, never during its
             step (pieces that become ready then wait for the step to end), as the emulation does

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
from hpcps.config.job import SYNC_MODES
from hpcps.config.limits import MAX_STALENESS
from hpcps.ps.codec import CODECS, PULL_CODECS, pull_nbytes, push_nbytes
from hpcps.ps.plan import MessagePlan, ready_fractions
from hpcps.ps.sharding import ALIGN_ELEMENTS, plan_shards
from hpcps.sim.network import SHARING, flow_rates
from hpcps.sim.profile import MachineProfile, WorkloadProfile

# A message between two ranks of one node: shared-memory latency, not the NIC's.
LOCAL_LATENCY_S = 1e-6
AUTO_RESOLUTION = 1e-3         # of the median worker step, when SimOptions.resolution_s is None
MAX_RESOLUTION = 0.1           # of the shortest step, whatever SimOptions.resolution_s says
BYTES_PER_ELEMENT = 4          # float32 parameters and gradients

PULL, PUSH = 0, 1
_SRC, _DST = 0, 1              # the two ends of a message
_POST, _DONE, _COMPUTE_END, _AGGREGATE_END, _POST_PUSHES, _COPIED = 0, 1, 2, 3, 4, 5      # event kinds
# Parts of a rank's time, in the order that claims an instant first (RankStats).
_COMPUTE, _AGGREGATE, _PUSH_MOVING, _PULL_MOVING = 0, 1, 2, 3


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
    bucket_mb: float = 4.0             # the job's [exchange] bucket_mb: the largest piece of a shard
    overlap: bool = True               # the job's [exchange] overlap: push each piece once it is ready
    codec: str = "none"                # the job's [exchange] codec: a worker's own in the schedule wins
    pull_codec: str = "none"           # the job's [exchange] pull_codec
    # Simulate one iteration more before and after the ones measured, and leave them out of the
    # result: the first starts cold (every worker pulls everything at once), and the last one's pushes
    # and updates share no NIC with the next iteration's pulls. What a long run does in between.
    # Under ssp and asp more iterations before those measured: see warm_up().
    steady_state: bool = False
    # The job's training.sync and training.staleness: "bsp", "ssp" (a worker may run up to staleness
    # clocks ahead of the slowest) or "asp" (servers apply each push as it arrives).
    sync: str = "bsp"
    staleness: int = 0

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
        if not (self.bucket_mb > 0 and math.isfinite(self.bucket_mb)):
            raise ValueError(f"bucket_mb must be > 0, got {self.bucket_mb}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if self.pull_codec not in PULL_CODECS:
            raise ValueError(f"pull_codec must be one of {', '.join(PULL_CODECS)}, got {self.pull_codec!r}")
        if self.sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, got {self.sync!r}")
        s = self.staleness
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= MAX_STALENESS:
            raise ValueError(f"staleness must be an integer from 0 to {MAX_STALENESS}, got {s!r}")
        if s and self.sync != "ssp":
            raise ValueError(f"staleness applies to sync = 'ssp' only, got staleness = {s} with sync = {self.sync!r}")


def job_options(job) -> dict:
    """The SimOptions fields a job (hpcps.config.Job) decides: its optimiser, its exchange's bucket
    size, overlap and push and pull codecs, and its synchronisation (training.sync and staleness)."""
    return {"optimizer": job.optimizer.name, "bucket_mb": job.exchange.bucket_mb, "overlap": job.exchange.overlap,
            "codec": job.exchange.codec, "pull_codec": job.exchange.pull_codec, "sync": job.training.sync,
            "staleness": job.training.staleness}


@dataclass(frozen=True)
class RankStats:
    """Seconds per iteration, averaged over the simulated iterations; the five add up to iteration_s,
    which under bsp is the iteration time and under ssp and asp the rank's own time per iteration (a
    worker's per clock; SimResult). Each instant of a rank's run counts once, for the first of these
    that holds then:

    compute_s     the worker's step
    aggregate_s   the server's updates of its pieces
    push_s        inside the rank's push window of an iteration: from the moment the last of its push
                  messages could start (both ends posted) to the end of the last one
    pull_s        the same for its pull messages
    wait_s        the rest: waiting for peers to post, and idling after the rank's last iteration until
                  the slowest rank's

    So messages that move while the rank computes count as compute (hidden), and push_s and pull_s are
    what the exchange adds once the rank has nothing else to do, as a trace's push and pull windows
    less their waits (hpcps.tune.observations.from_trace)."""
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
    iteration_s: float = math.nan      # this rank's seconds per iteration, over the measured ones


@dataclass(frozen=True)
class SimResult:
    """iteration_time_s under bsp: the mean time from the end of one iteration (the latest of any rank's
    step, push or update of it) to the end of the next. Under ssp and asp workers do not keep in step:
    each worker's time per iteration is its own (from the end of one of its iterations, its pushes out,
    to the end of the next), and iteration_time_s is the time the workers take, each at its own rate,
    for a global batch of samples: global_batch / sum over workers of batch / its mean time per
    iteration. So samples_per_s is the sum of the workers' own rates, as the runtime's progress lines
    report them under ssp and asp; iteration_times_s are the same per iteration (not averaging to it)."""
    status: str                        # "ok", or why the schedule cannot run
    iteration_time_s: float            # inf when status is not "ok"
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


@dataclass(frozen=True)
class Timeline:
    """What one simulation did (simulate_run), every simulated iteration included (with steady_state,
    the one before and the one after those measured); workers in schedule order.

    step_start, step_end   (iterations, workers): seconds at which each worker's step began and ended
    iteration_end          (iterations, workers): under ssp and asp, when the worker's iteration ended
                           (its step over and its pushes out); nan under bsp
    readable               (events, 4): under ssp and asp, rows (time, worker, piece, version): from that
                           time on the worker could read that version of the piece (its pull arrived,
                           or the worker's own rank updated it); empty under bsp
    updates                (updates, 6): under ssp and asp, rows (start, end, rank, piece, worker, clock):
                           an aggregation of the piece's round `clock` (worker -1) or an asp step on that
                           worker's push of that clock; empty under bsp
    pulls                  (pulls, 5): under ssp and asp, rows (start, end, piece, worker, number): a pull
                           from when it began moving to its arrival, numbered by the version it carries
                           (ssp) or the clock of the push it answers (asp); empty under bsp"""
    step_start: np.ndarray
    step_end: np.ndarray
    iteration_end: np.ndarray
    readable: np.ndarray
    updates: np.ndarray
    pulls: np.ndarray


def simulate(cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile, machine: MachineProfile,
             options: SimOptions = SimOptions()) -> SimResult:
    """Simulate options.iterations iterations of placement on cluster under options.sync. Infeasible
    schedules (a node out of memory) come back with status saying why and an infinite iteration time."""
    return simulate_run(cluster, placement, profile, machine, options)[0]


def simulate_run(cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile, machine: MachineProfile,
                 options: SimOptions = SimOptions()) -> tuple[SimResult, Timeline | None]:
    """simulate(), and the run's Timeline (None for an infeasible schedule)."""
    options.check()
    sched = placement.schedule
    if len(placement.rank_nodes) < sched.n_ranks_needed:
        raise ValueError(f"placement names nodes for {len(placement.rank_nodes)} ranks, the schedule needs "
                         f"{sched.n_ranks_needed}")
    status = check_memory(cluster, placement, profile, machine)
    codec_note = machine.codec_note([w.codec or options.codec for w in sched.workers] + [options.pull_codec])
    common = dict(global_batch=sched.global_batch, n_servers=len(sched.servers), n_workers=len(sched.workers),
                  notes=tuple(n for n in (profile.note, codec_note) if n))
    if status == "ok":
        status = check_pieces(profile.params, sched.servers, options.bucket_mb)
    if status != "ok":
        return SimResult(status, math.inf, **common), None
    run = (_Run if options.sync == "bsp" else _StaleRun)(cluster, placement, profile, machine, options)
    result = run.run(common)
    return result, run.timeline()


# At most this many times the staleness bound, and at most MAX_WARM_UP in all: clocks a fast worker may
# take to get that far ahead.
MAX_LEAD_CLOCKS = 20
MAX_WARM_UP = 200


def warm_up(options: SimOptions, steps: np.ndarray) -> int:
    """Iterations a steady-state simulation leaves out before those it measures. bsp: the cold start
    (every piece pulled at once). ssp and asp send nothing before the first step, so the second
    iteration still differs from a long run's: two. Under ssp the fastest worker then gets ahead by
    up to s clocks before the bound holds it to the slowest one's pace; with steps (noise-free, per
    worker) of ratio q = slowest / fastest, that takes s q / (q - 1) of its clocks (none when all
    steps are alike; at most MAX_LEAD_CLOCKS x s: a worker that gains less than a twentieth of a clock
    per clock differs that little in pace anyway; and at most MAX_WARM_UP clocks in all, which binds
    from s = 10 on)."""
    if options.sync == "bsp":
        return 1
    s = options.staleness if options.sync == "ssp" else 0
    q = float(np.max(steps) / np.min(steps)) if steps.size else 1.0
    lead = math.ceil(s * q / (q - 1)) if q > 1 + 1e-9 else 0
    return 2 + min(lead, MAX_LEAD_CLOCKS * s, MAX_WARM_UP)


# The most pieces a message plan may have: the exchange's message tags hold 8191 per kind
# (hpcps.ps.exchange: MPI promises tags up to 32767).
MAX_PIECES = (1 << 13) - 1


def check_pieces(params: int, servers, bucket_mb: float) -> str:
    """'ok', or why the exchange could not run a plan of this many pieces (counted without building it)."""
    bucket = max(ALIGN_ELEMENTS, (int(bucket_mb * 2 ** 20) // BYTES_PER_ELEMENT) // ALIGN_ELEMENTS * ALIGN_ELEMENTS)
    pieces = sum(-(-s.size // bucket) for s in plan_shards(params, list(servers)) if s.size > 0)
    if pieces > MAX_PIECES:
        return (f"{pieces} pieces of at most {bucket_mb:g} MiB ([exchange] bucket_mb) are more than the "
                f"{MAX_PIECES} the exchange's message tags allow; raise bucket_mb")
    return "ok"


class _Run:
    """One simulation's state: options.iterations, with steady_state one more before and after them.
    Messages are numbered by a template (every pull and push of one iteration, from the message plan)
    and an iteration: flow id = iteration * n_template + template.
    A template's next message is never posted before its last one completed (a pull of iteration k+1
    needs the piece's update of iteration k, which needs every push of it, which each worker posted
    after its pulls of iteration k arrived), so per template one set of post times suffices."""

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

        # The run's message plan, each worker's pushes at its codec's encoded size and the pulls at the pull
        # codec's (hpcps.ps.plan.plan_for_job); empty shards have no pieces and move nothing, as in the exchange.
        codecs = [w.codec or options.codec for w in sched.workers]
        plan = MessagePlan.build(profile.params, sched.servers, self.worker_ranks.tolist(),
                                 bucket_bytes=int(options.bucket_mb * 2 ** 20), push_nbytes=push_nbytes(codecs),
                                 pull_nbytes=pull_nbytes(options.pull_codec))
        self.plan = plan
        self._build_templates(plan, node_of, latency, machine)
        fractions = (ready_fractions(plan, profile.forward_fraction) if options.overlap
                     else [1.0] * len(plan.pieces))
        self.fraction = np.array(fractions, dtype=np.float64)

        # Work: steps per (iteration, worker) with noise and stragglers drawn up front, seeded.
        n_w = len(self.worker_ranks)
        base = compute_times(cluster, placement, profile)
        # A lossy codec encodes each push to another rank on the worker (with its error feedback) and the
        # server decodes it, at the calibrated cost per value (machine.codec_s_per_element; none when not
        # calibrated). A push to the worker's own rank is a plain copy, as in the exchange.
        encode = np.array([machine.codec_cost(c)[0] for c in codecs])
        decode = np.array([machine.codec_cost(c)[1] for c in codecs])
        sizes = np.array([p.size for p in plan.pieces], dtype=np.float64)
        servers = np.array([p.server for p in plan.pieces], dtype=np.int64)
        remote = self.worker_ranks[:, None] != servers[None, :]
        base = base + encode * (remote @ sizes) / speed[node_of[self.worker_ranks]]
        server_codec = decode @ remote              # per piece and value: the decodes of its remote pushes
        # A lossy pull codec: the server encodes each new version of a piece once, and every worker (its
        # own included) decodes every piece. Charged at the codec's calibrated push costs, which include
        # error feedback that pulls do not have: an upper bound.
        pull_encode, pull_decode = machine.codec_cost(options.pull_codec)
        server_codec = server_codec + pull_encode
        base = base + pull_decode * sizes.sum() / speed[node_of[self.worker_ranks]]
        rng = np.random.default_rng(options.seed)
        # Iterations simulated; those measured are [first, first + options.iterations).
        self.first = warm_up(options, base) if options.steady_state else 0
        self.iters = iters = options.iterations + self.first + (1 if options.steady_state else 0)
        factor = np.ones((iters, n_w))
        if options.noise_sigma > 0:
            s = options.noise_sigma
            factor *= rng.lognormal(-s * s / 2, s, size=(iters, n_w))     # mean one
        if options.straggler_prob > 0:
            factor *= np.where(rng.random((iters, n_w)) < options.straggler_prob, options.straggler_slowdown, 1.0)
        self.compute = base[None, :] * factor
        # At most a tenth of the shortest step: events handled early must not swallow steps whole.
        self.resolution = min(AUTO_RESOLUTION * float(np.median(base)) if options.resolution_s is None
                              else options.resolution_s, MAX_RESOLUTION * float(np.min(self.compute)))
        per_byte = (machine.aggregate_s_per_byte_per_worker * n_w + machine.update_cost(options.optimizer))
        # Each aggregation of a piece also costs a fixed amount whatever its size (machine.aggregate_fixed_s):
        # with the per-byte terms alone, more servers with smaller shards looked cheaper than they are.
        fixed = machine.aggregate_fixed_s
        self.aggregate = ((per_byte * BYTES_PER_ELEMENT + server_codec) * sizes + fixed) / speed[node_of[servers]]
        if options.sync == "asp":
            # Each push is applied on its own: one row's share of the aggregation, the optimiser step and,
            # for a push from another rank, its decoding and the encoding of the answer. [piece, worker row]
            one = machine.aggregate_s_per_byte_per_worker + machine.update_cost(options.optimizer)
            codec = (decode[:, None] + pull_encode) * remote
            self.apply_cost = (((one * BYTES_PER_ELEMENT + codec) * sizes + fixed) / speed[node_of[servers]]).T
        self.network_bytes = float(self.bytes[~self.local].sum())

    def _build_templates(self, plan: MessagePlan, node_of: np.ndarray, latency: np.ndarray,
                         machine: MachineProfile) -> None:
        """Arrays of plan.messages() (pulls piece by piece in forward order, then pushes piece by piece
        in backward order, each for every worker), built from the plan's tables without a Python object
        per message: half a million messages an iteration at 1024 nodes."""
        n_p, n_w = len(plan.pieces), len(plan.workers)
        workers = np.array(plan.workers, dtype=np.int64)
        server = np.array([p.server for p in plan.pieces], dtype=np.int64)
        elements = np.array([p.size for p in plan.pieces], dtype=np.int64)
        pull_piece, pull_row = np.repeat(np.arange(n_p), n_w), np.tile(np.arange(n_w), n_p)
        push_piece, push_row = np.repeat(np.arange(n_p)[::-1], n_w), np.tile(np.arange(n_w), n_p)
        push_nbytes = np.array(plan.push_nbytes, dtype=np.float64).reshape(n_w, n_p)
        self.kind = np.concatenate([np.full(n_p * n_w, PULL), np.full(n_p * n_w, PUSH)])
        self.piece = np.concatenate([pull_piece, push_piece])
        self.row = np.concatenate([pull_row, push_row])
        self.src = np.concatenate([server[pull_piece], workers[push_row]])
        self.dst = np.concatenate([workers[pull_row], server[push_piece]])
        pull_nbytes = np.array(plan.pull_nbytes, dtype=np.float64)
        self.bytes = np.concatenate([pull_nbytes[pull_piece], push_nbytes[push_row, push_piece]])
        self.n_template = len(self.src)
        self.pull_t = np.empty((n_p, n_w), dtype=np.int64)          # [piece, worker row] -> template
        self.pull_t[pull_piece, pull_row] = np.arange(n_p * n_w)
        self.push_t = np.empty((n_p, n_w), dtype=np.int64)
        self.push_t[push_piece, push_row] = n_p * n_w + np.arange(n_p * n_w)
        sn, dn = node_of[self.src], node_of[self.dst]
        self.local = sn == dn
        # A rank serving itself copies float32 values, never encoded ones; ranks of one node send messages.
        own = self.src == self.dst
        copied = np.where(own, BYTES_PER_ELEMENT * elements[self.piece].astype(np.float64), self.bytes)
        self.local_time = np.where(own, 0.0, LOCAL_LATENCY_S) + copied / machine.memcpy_bytes_per_s
        self.latency = np.maximum(latency[sn], latency[dn])
        self.res_src, self.res_dst = sn, self.n_nodes + dn

    # -- the event loop -------------------------------------------------------------------------------

    def run(self, common: dict) -> SimResult:
        self._init_state()
        self._begin()
        events = self._loop()
        return self._result(common, events)

    def _init_state(self) -> None:
        iters, R = self.iters, self.n_ranks
        n_p, n_w = len(self.plan.pieces), len(self.worker_ranks)
        self.posted = np.full((self.n_template, 2), np.nan)     # this message's post time at each end
        self.started = np.full(self.n_template, np.nan)         # when it started moving
        self.pulls_left = np.full(n_w, n_p, dtype=np.int64)     # of the iteration a worker awaits
        self.pushes_left = np.full(n_p, n_w, dtype=np.int64)    # of the iteration a piece's server awaits
        self.queue = [[] for _ in range(R)]                     # pieces ready to aggregate, per rank
        self.busy = np.zeros(R, dtype=bool)                     # computing or aggregating
        self.can_compute = np.full(n_w, -1, dtype=np.int64)     # iteration whose pulls are all in
        self.compute_start = np.full((iters, n_w), np.nan)
        self.compute_end = np.full((iters, n_w), np.nan)
        self.aggregations: list[tuple[int, float, float]] = []  # (rank, start, end)
        self.aggregated = np.zeros(iters, dtype=np.int64)       # pieces aggregated per iteration
        # A rank's push and pull window per iteration: the last start and the last end of its messages.
        self.win_start = np.full((iters, 2, R), -np.inf)
        self.win_end = np.full((iters, 2, R), -np.inf)
        self.finished = np.zeros((iters, R))                     # when a rank's iteration ends
        self.heap: list = []
        self.seq = 0
        self.pending: dict[tuple[float, int], list] = {}        # (time, iteration) -> pushes posted then
        # Flows on the NICs: id, bytes left, NIC resources, rate (kept side by side, in step).
        self.a_id = np.empty(0, np.int64)
        self.a_left = np.empty(0)
        self.a_src = np.empty(0, np.int64)
        self.a_dst = np.empty(0, np.int64)
        self.a_rate = np.empty(0)
        self.now = 0.0
        self.dirty = False

    def _begin(self) -> None:
        """Iteration 0: every server sends its pieces' values and awaits every push; every worker awaits
        every piece."""
        pulls, pushes = self.pull_t.ravel(), self.push_t.ravel()
        self._push_event(0.0, _POST, (0, pulls, _SRC))
        self._push_event(0.0, _POST, (0, pulls, _DST))
        self._push_event(0.0, _POST, (0, pushes, _DST))

    def _loop(self) -> int:
        """Handle events and move flows until nothing is left to happen; returns the events handled."""
        events = 0
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
            if self.a_id.size:
                done = self.a_left <= self.a_rate * tol
                if done.any():
                    self._drained(self.a_id[done])
                    keep = ~done
                    self.a_id, self.a_left = self.a_id[keep], self.a_left[keep]
                    self.a_src, self.a_dst = self.a_src[keep], self.a_dst[keep]
                    self.dirty = True
            while self.heap and self.heap[0][0] <= self.now + tol:
                _, _, kind, payload = heapq.heappop(self.heap)
                events += 1
                if kind == _POST:
                    self._post(*payload)
                elif kind == _DONE:
                    self._complete(*payload)
                elif kind == _COMPUTE_END:
                    self._compute_end(*payload)
                elif kind == _AGGREGATE_END:
                    self._aggregate_end(*payload)
                elif kind == _COPIED:
                    self._copied(*payload)
                else:
                    self._post(payload[1], np.concatenate(self.pending.pop(payload)), _SRC)
            if self.dirty and self.a_id.size:
                self.a_rate = flow_rates(self.a_src, self.a_dst, self.capacity, self.opt.sharing)
            self.dirty = False
        return events

    def _copied(self, r: int, rows: np.ndarray, pieces: np.ndarray, versions: np.ndarray) -> None:
        raise NotImplementedError("bsp reads pulls, never copies of its own rank's pieces")

    def _push_event(self, t: float, kind: int, payload) -> None:
        heapq.heappush(self.heap, (t, self.seq, kind, payload))
        self.seq += 1

    def _post(self, k: int, tmpl: np.ndarray, side: int) -> None:
        """One end of these messages of iteration k posted now; those whose other end has posted start."""
        if not np.isnan(self.posted[tmpl, side]).all():
            raise RuntimeError("a message was posted again before it completed (a bug in the simulator)")
        self.posted[tmpl, side] = self.now
        idx = tmpl[~np.isnan(self.posted[tmpl, 1 - side])]
        if idx.size == 0:
            return
        t = self.now
        self.started[idx] = t
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
            self.dirty = True

    def _drained(self, ids: np.ndarray) -> None:
        """Flows whose last byte left now: they complete one latency later."""
        tmpl = ids % self.n_template
        ends = self.now + self.latency[tmpl]
        for end in np.unique(ends):
            sel = ends == end
            for k in np.unique(ids[sel] // self.n_template):
                self._push_event(float(end), _DONE, (int(k), tmpl[sel & (ids // self.n_template == k)]))

    def _record_windows(self, k: int, tmpl: np.ndarray, t: float) -> None:
        """Iteration k's pull and push windows at both ends of these messages, which ended at t."""
        kind, src, dst = self.kind[tmpl], self.src[tmpl], self.dst[tmpl]
        other = src != dst
        ends = np.concatenate([src, dst[other]])
        kinds = np.concatenate([kind, kind[other]])
        starts = np.concatenate([self.started[tmpl], self.started[tmpl][other]])
        np.maximum.at(self.win_start[k], (kinds, ends), starts)
        self.win_end[k][kinds, ends] = t

    def _complete(self, k: int, tmpl: np.ndarray) -> None:
        """Messages of iteration k done: windows, then what each completion lets happen."""
        t = self.now
        kind = self.kind[tmpl]
        self._record_windows(k, tmpl, t)
        self.posted[tmpl] = np.nan
        self.started[tmpl] = np.nan
        pull = kind == PULL
        if pull.any():
            rows, counts = np.unique(self.row[tmpl[pull]], return_counts=True)
            self.pulls_left[rows] -= counts
            for w in rows[self.pulls_left[rows] == 0]:
                self.can_compute[w] = k
                self._kick(int(self.worker_ranks[w]))
        if (~pull).any():
            pushed = tmpl[~pull]
            senders = self.src[pushed]
            self.finished[k, senders] = np.maximum(self.finished[k, senders], t)
            pieces, counts = np.unique(self.piece[pushed], return_counts=True)
            self.pushes_left[pieces] -= counts
            for p in pieces[self.pushes_left[pieces] == 0]:
                r = self.plan.pieces[p].server
                self.queue[r].append((int(p), k))
                self._kick(r)

    def _kick(self, r: int) -> None:
        """Rank r, if idle, aggregates the next ready piece, else starts a step whose pulls are in."""
        if self.busy[r]:
            return
        t = self.now
        if self.queue[r]:
            p, k = self.queue[r].pop(0)
            self.busy[r] = True
            self._push_event(t + float(self.aggregate[p]), _AGGREGATE_END, (r, p, k, t))
            return
        w = self.worker_of_rank[r]
        if w < 0 or self.can_compute[w] < 0:
            return
        k = int(self.can_compute[w])
        self.can_compute[w] = -1
        self.busy[r] = True
        c = float(self.compute[k, w])
        self.compute_start[k, w] = t
        # Each piece's push is posted once the backward pass has produced its gradient. Posts are put
        # on the resolution's grid (at most that early), so that workers' posts at nearly the same
        # time are one event: thousands of workers post hundreds of pieces each.
        posts = t + c * self.fraction
        if self.resolution > 0:
            posts = np.maximum(t, np.floor(posts / self.resolution) * self.resolution)
        for when in np.unique(posts):
            key = (float(when), k)
            batch = self.pending.get(key)
            if batch is None:
                self.pending[key] = batch = []
                self._push_event(key[0], _POST_PUSHES, key)
            batch.append(self.push_t[posts == when, w])
        self._push_event(t + c, _COMPUTE_END, (k, int(w)))

    def _compute_end(self, k: int, w: int) -> None:
        r = int(self.worker_ranks[w])
        t = self.now
        self.busy[r] = False
        self.compute_end[k, w] = t
        self.finished[k, r] = max(self.finished[k, r], t)
        if k + 1 < self.iters:                # the next iteration's receives, once backward is through
            self.pulls_left[w] = len(self.plan.pieces)
            self._post(k + 1, self.pull_t[:, w], _DST)
        self._kick(r)

    def _aggregate_end(self, r: int, p: int, k: int, began: float) -> None:
        t = self.now
        self.busy[r] = False
        self.aggregations.append((r, began, t))
        self.aggregated[k] += 1
        self.finished[k, r] = max(self.finished[k, r], t)
        if k + 1 < self.iters:                # the new values to every worker; the next pushes awaited
            self.pushes_left[p] = len(self.worker_ranks)
            self._post(k + 1, self.pull_t[p], _SRC)
            self._post(k + 1, self.push_t[p], _DST)
        self._kick(r)

    # -- results --------------------------------------------------------------------------------------

    def _result(self, common: dict, events: int) -> SimResult:
        measured = self.opt.iterations
        if np.isnan(self.compute_end).any() or (self.aggregated != len(self.plan.pieces)).any():
            raise RuntimeError("simulation ended with ranks still in an iteration (a bug in the simulator)")
        active = np.zeros(self.n_ranks, dtype=bool)
        active[self.worker_ranks] = True
        active |= self.is_server
        ends = np.concatenate([[0.0], np.max(self.finished[:, active], axis=1)])   # ends[k + 1]: iteration k's
        window = ends[self.first], ends[self.first + measured]
        times = np.diff(ends[self.first:self.first + measured + 1])
        span = window[1] - window[0]
        parts = self._parts(*window)
        sched = self.placement.schedule
        stats = []
        for r in np.flatnonzero(active):
            w = self.worker_of_rank[r]
            spec = sched.workers[w] if w >= 0 else None
            compute, aggregate, push, pull = (float(x) / measured for x in parts[r])
            stats.append(RankStats(int(r), self.placement.rank_nodes[r], bool(self.is_server[r]),
                                   spec.batch if spec else 0, spec.threads if spec else 0,
                                   compute, pull, push, aggregate,
                                   max(0.0, span / measured - compute - pull - push - aggregate), span / measured))
        return SimResult("ok", span / measured, tuple(float(x) for x in times), tuple(stats),
                         bytes_per_iteration=self.network_bytes, events=events, **common)

    def timeline(self) -> Timeline:
        return Timeline(self.compute_start, self.compute_end, np.full_like(self.compute_end, np.nan),
                        np.empty((0, 4)), np.empty((0, 6)), np.empty((0, 5)))

    def _parts(self, t0, t1) -> np.ndarray:
        """(n_ranks, 4) seconds of compute, aggregation, push and pull in [t0, t1] (RankStats): floats, or
        arrays of shape (n_ranks,) for a window per rank."""
        rank, start, end, kind = [], [], [], []
        w_rank = np.broadcast_to(self.worker_ranks, self.compute_start.shape)
        rank.append(w_rank.ravel())
        start.append(self.compute_start.ravel())
        end.append(self.compute_end.ravel())
        kind.append(np.full(w_rank.size, _COMPUTE))
        if self.aggregations:
            a = np.array(self.aggregations)
            rank.append(a[:, 0].astype(np.int64))
            start.append(a[:, 1])
            end.append(a[:, 2])
            kind.append(np.full(len(a), _AGGREGATE))
        for ph, part in ((PUSH, _PUSH_MOVING), (PULL, _PULL_MOVING)):
            s, e = self.win_start[:, ph, :], self.win_end[:, ph, :]
            ok = np.isfinite(s) & np.isfinite(e)
            rank.append(np.broadcast_to(np.arange(self.n_ranks), s.shape)[ok])
            start.append(s[ok])
            end.append(e[ok])
            kind.append(np.full(int(ok.sum()), part))
        ranks = np.concatenate(rank)
        if isinstance(t0, np.ndarray):
            t0, t1 = t0[ranks], t1[ranks]
        return claimed_time(ranks, np.clip(np.concatenate(start), t0, t1),
                            np.clip(np.concatenate(end), t0, t1), np.concatenate(kind), self.n_ranks, 4)


class _StaleRun(_Run):
    """ssp and asp, as the emulation runs them (hpcps/ps/stale.py, hpcps/ps/sync.py, docs/sim.md):

    step     a worker at clock c starts its step once its pushes of clock c - 1 are through (the next
             step reuses the gradient buffer), its rank is neither updating a piece nor has one waiting,
             and under ssp every piece it reads has a version >= c - s (pieces its own rank serves are
             read there); asp waits for no version
    push     every piece at the step's end: emulated ssp and asp steps push after the step
    update   ssp: a piece's round r is aggregated once every worker's push of round r is in, round by
             round, at bsp's cost; asp: each push is applied as it arrives, a worker's next push of a
             piece only once the answer to its previous one has left. A rank keeps updating during its
             own worker's step (it serves while the step is held); a step that ends during an update
             ends with it
    pull     ssp: after an aggregation the server offers the new version to every worker of another rank
             whose previous pull of the piece has arrived; the others get the newest version once it
             has. asp: the server answers the pushing worker right after applying its push. A worker
             always has a receive posted, so a pull moves as soon as it is sent
    No pull comes before the first step: every rank starts from the same values.

    Messages keep the bsp numbering by template and iteration: a push by the worker's clock, an ssp
    pull by the version it carries (up to iterations: the last version is offered too), an asp answer
    by the clock of the push it answers. Each template still has one message in flight at a time.
    """

    def _init_state(self) -> None:
        super()._init_state()
        iters, R = self.iters, self.n_ranks
        n_p, n_w = len(self.plan.pieces), len(self.worker_ranks)
        self.ssp = self.opt.sync == "ssp"
        self.s = int(self.opt.staleness)
        self.server_of = np.array([p.server for p in self.plan.pieces], dtype=np.int64)
        self.own = self.server_of[None, :] == self.worker_ranks[:, None]   # [worker, piece]: its rank serves it
        self.remote_rows = [np.flatnonzero(~self.own[:, p]) for p in range(n_p)]
        self.clock = np.zeros(n_w, dtype=np.int64)           # the worker's step under way, else its next
        self.stepping = np.zeros(R, dtype=bool)              # busy (from _Run) is the rank's updates alone
        self.deferred: dict[int, tuple[int, int]] = {}       # rank -> (clock, worker): step over, update not
        self.pushes_out = np.zeros(n_w, dtype=np.int64)      # of the worker's last step, not yet through
        self.version = np.zeros(n_p, dtype=np.int64)         # ssp: rounds aggregated; asp: pushes applied
        self.avail = np.zeros((n_w, n_p), dtype=np.int64)    # the newest version each worker can read
        self.behind = np.zeros(n_w, dtype=np.int64)          # ssp: pieces below the worker's next clock - s
        self.round_in: dict[int, np.ndarray] = {}            # ssp: round -> pushes in, per piece
        self.in_flight = np.zeros((n_p, n_w), dtype=bool)    # a pull of the piece to the worker under way
        self.sent = np.zeros((n_p, n_w), dtype=np.int64)     # the version of the last pull sent
        self.held = np.full((n_p, n_w), -1, dtype=np.int64)  # asp: clock of a push awaiting its turn
        self.applied = np.zeros(iters, dtype=np.int64)       # asp: pushes applied, per clock
        self.worker_end = np.full((iters, n_w), np.nan)      # a worker's iteration: its pushes through
        self.enqueued = np.zeros(R, dtype=np.int64)          # updates a rank has had to do so far
        self.updated = np.zeros(R, dtype=np.int64)           # and has done
        self.ready_mark = np.full(R, -1, dtype=np.int64)     # updates to be done before its worker's step
        self.readable: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
        self.update_log: list[tuple[float, float, int, int, int, int]] = []
        self.pull_log: list[np.ndarray] = []

    def _begin(self) -> None:
        """asp servers await every remote worker's first push of each piece (ssp servers post a round's
        receive once the previous round's push arrived, which is before the worker sends it: posted
        with the push here); every worker may start."""
        if not self.ssp:
            self._post(0, self.push_t[~self.own.T], _DST)
        for r in np.unique(self.worker_ranks):
            self._kick(int(r))

    def _kick(self, r: int) -> None:
        """Rank r, if not updating, updates the next piece waiting. Its worker, not in a step, starts
        the next one if the policy allows and the rank has done the updates that were waiting when the
        policy first allowed it (the exchange's progress() before the step applies what has arrived,
        and what arrives meanwhile is applied during the step)."""
        t = self.now
        if not self.busy[r] and self.queue[r]:
            item = self.queue[r].pop(0)
            self.busy[r] = True
            cost = self.aggregate[item[0]] if self.ssp else self.apply_cost[item[0], item[1]]
            self._push_event(t + float(cost), _AGGREGATE_END, (r, item, t))
        w = int(self.worker_of_rank[r])
        if w < 0 or self.stepping[r]:
            return
        c = int(self.clock[w])
        if c >= self.iters or self.pushes_out[w] or (self.ssp and self.behind[w]):
            return
        if self.ready_mark[r] < 0:        # updates queued or under way now go first
            self.ready_mark[r] = self.enqueued[r]
        if self.updated[r] < self.ready_mark[r]:
            return
        self.ready_mark[r] = -1
        self.stepping[r] = True
        self.compute_start[c, w] = t
        self._push_event(t + float(self.compute[c, w]), _COMPUTE_END, (c, w))

    def _enqueue(self, r: int, item: tuple) -> None:
        self.queue[r].append(item)
        self.enqueued[r] += 1

    def _compute_end(self, k: int, w: int) -> None:
        r = int(self.worker_ranks[w])
        if self.busy[r]:                  # the hold polls the exchange: it returns once the update is done
            self.deferred[r] = (k, w)
            return
        self._end_step(k, w)

    def _end_step(self, k: int, w: int) -> None:
        """Worker w's step k is over: it pushes every piece (a push to its own rank is a copy, which no
        receive waits for), and its next clock needs version k + 1 - s."""
        r = int(self.worker_ranks[w])
        t = self.now
        self.stepping[r] = False
        self.compute_end[k, w] = t
        self.finished[k, r] = max(self.finished[k, r], t)
        self.clock[w] = k + 1
        self.pushes_out[w] = len(self.plan.pieces)
        pushes = self.push_t[:, w]
        self._post(k, pushes if self.ssp else pushes[self.own[w]], _DST)
        self._post(k, pushes, _SRC)
        if self.ssp:
            need = k + 1 - self.s
            self.behind[w] = int(np.count_nonzero(self.avail[w] < need)) if need > 0 else 0
        self._kick(r)

    def _send(self, pieces: np.ndarray, rows: np.ndarray, k: int) -> None:
        """Pulls of pieces to worker rows (arrays, pairwise) with each piece's current version, numbered k."""
        if pieces.size == 0:
            return
        self.in_flight[pieces, rows] = True
        self.sent[pieces, rows] = self.version[pieces]
        tmpl = self.pull_t[pieces, rows]
        self._post(k, tmpl, _DST)
        self._post(k, tmpl, _SRC)

    def _copied(self, r: int, rows: np.ndarray, pieces: np.ndarray, versions: np.ndarray) -> None:
        """Rank r's worker has copied the new version of a piece the rank serves."""
        self._readable(rows, pieces, versions)
        self._kick(r)

    def _readable(self, rows: np.ndarray, pieces: np.ndarray, versions: np.ndarray) -> None:
        """Workers rows may read these versions of pieces from now on (pairs appear once per call)."""
        old = self.avail[rows, pieces]
        new = np.maximum(old, versions)
        if self.ssp:
            need = self.clock[rows] - self.s
            crossed = (old < need) & (new >= need)
            np.subtract.at(self.behind, rows[crossed], 1)
        self.avail[rows, pieces] = new
        self.readable.append((self.now, rows.copy(), pieces.copy(), new))

    def _complete(self, k: int, tmpl: np.ndarray) -> None:
        """Messages numbered k done: windows, then what each completion lets happen; ranks act once every
        completion is in (as the exchange handles a poll's completions before the policy goes on)."""
        t = self.now
        n_p, n_w = len(self.plan.pieces), len(self.worker_ranks)
        kind = self.kind[tmpl]
        if k < self.iters:                # the last version's pulls belong to no iteration
            self._record_windows(k, tmpl, t)
        began = self.started[tmpl].copy()
        self.posted[tmpl] = np.nan
        self.started[tmpl] = np.nan
        kick: set[int] = set()
        pull = kind == PULL
        if pull.any():
            pieces, rows = self.piece[tmpl[pull]], self.row[tmpl[pull]]
            self.pull_log.append(np.column_stack([began[pull], np.full(pieces.size, t), pieces, rows,
                                                  np.full(pieces.size, k)]))
            self.in_flight[pieces, rows] = False
            self._readable(rows, pieces, self.sent[pieces, rows])
            kick.update(self.worker_ranks[rows].tolist())
            if self.ssp:                  # only the newest version goes next
                newer = self.version[pieces] > self.sent[pieces, rows]
                for v in np.unique(self.version[pieces[newer]]):
                    sel = newer & (self.version[pieces] == v)
                    self._send(pieces[sel], rows[sel], int(v))
            else:                         # a push held for this answer to leave may be applied now
                clocks = self.held[pieces, rows]
                for p, w, c in zip(pieces[clocks >= 0], rows[clocks >= 0], clocks[clocks >= 0]):
                    self.held[p, w] = -1
                    self._enqueue(int(self.server_of[p]), (int(p), int(w), int(c)))
                    kick.add(int(self.server_of[p]))
        if (~pull).any():
            pushed = tmpl[~pull]
            pieces, rows = self.piece[pushed], self.row[pushed]
            senders = self.src[pushed]
            self.finished[k, senders] = np.maximum(self.finished[k, senders], t)
            ws, counts = np.unique(rows, return_counts=True)
            self.pushes_out[ws] -= counts
            for w in ws[self.pushes_out[ws] == 0]:
                self.worker_end[k, w] = t
                kick.add(int(self.worker_ranks[w]))
            if self.ssp:
                got = self.round_in.setdefault(k, np.zeros(n_p, dtype=np.int64))
                ps, counts = np.unique(pieces, return_counts=True)
                got[ps] += counts
                for p in ps[got[ps] == n_w]:
                    self._enqueue(int(self.server_of[p]), (int(p), k))
                    kick.add(int(self.server_of[p]))
            else:
                wait = self.in_flight[pieces, rows]
                self.held[pieces[wait], rows[wait]] = k
                for p, w in zip(pieces[~wait], rows[~wait]):
                    self._enqueue(int(self.server_of[p]), (int(p), int(w), k))
                    kick.add(int(self.server_of[p]))
        for r in sorted(kick):
            self._kick(r)

    def _aggregate_end(self, r: int, item: tuple, began: float) -> None:
        t = self.now
        self.busy[r] = False
        self.updated[r] += 1
        self.aggregations.append((r, began, t))
        p, k = item[0], item[-1]
        self.update_log.append((began, t, r, p, item[1] if len(item) == 3 else -1, k))
        if self.ssp:
            if self.version[p] != k:
                raise RuntimeError("a round was aggregated out of order (a bug in the simulator)")
            self.version[p] = k + 1
            self.aggregated[k] += 1
            if self.aggregated[k] == len(self.plan.pieces):
                del self.round_in[k]
            rows = self.remote_rows[p]
            rows = rows[~self.in_flight[p, rows]]
            self._send(np.full(rows.size, p), rows, k + 1)
        else:
            w = item[1]
            self.version[p] += 1
            self.applied[k] += 1
            if not self.own[w, p]:        # the next push's receive, and the answer
                if k + 1 < self.iters:
                    self._post(k + 1, self.push_t[p, w:w + 1], _DST)
                self._send(np.array([p]), np.array([w]), k)
        self.finished[k, r] = max(self.finished[k, r], t)
        mine = self.worker_of_rank[r]
        if mine >= 0 and self.own[mine, p]:       # its worker copies the new values, as bsp's local pull
            copied = t + float(self.local_time[self.pull_t[p, mine]])
            self._push_event(copied, _COPIED, (r, np.array([mine]), np.array([p]), self.version[p:p + 1].copy()))
        if r in self.deferred:
            self._end_step(*self.deferred.pop(r))
        self._kick(r)

    # -- results --------------------------------------------------------------------------------------

    def _result(self, common: dict, events: int) -> SimResult:
        measured, first = self.opt.iterations, self.first
        n_p, n_w = len(self.plan.pieces), len(self.worker_ranks)
        served = (self.aggregated == n_p).all() if self.ssp else (self.applied == n_p * n_w).all()
        if np.isnan(self.worker_end).any() or not served:
            raise RuntimeError("simulation ended with ranks still in an iteration (a bug in the simulator)")
        sched = self.placement.schedule
        # Each worker's own iterations: from the end of the one before those measured to the last's end.
        start = self.worker_end[first - 1] if first else np.zeros(n_w)
        ends = self.worker_end[first:first + measured]
        own_s = (ends[-1] - start) / measured
        batch = np.array([w.batch for w in sched.workers], dtype=np.float64)
        durations = np.diff(np.vstack([start, ends]), axis=0)            # (measured, workers)
        times = batch.sum() / np.sum(batch / durations, axis=1)
        active = np.zeros(self.n_ranks, dtype=bool)
        active[self.worker_ranks] = True
        active |= self.is_server
        # A rank that only serves: its iteration ends when its pieces have every worker's push of it.
        t0 = self.finished[first - 1].copy() if first else np.zeros(self.n_ranks)
        t1 = self.finished[first + measured - 1].copy()
        t0[self.worker_ranks], t1[self.worker_ranks] = start, ends[-1]
        parts = self._parts(t0, t1)
        stats = []
        for r in np.flatnonzero(active):
            w = self.worker_of_rank[r]
            spec = sched.workers[w] if w >= 0 else None
            own = (t1[r] - t0[r]) / measured
            compute, aggregate, push, pull = (float(x) / measured for x in parts[r])
            stats.append(RankStats(int(r), self.placement.rank_nodes[r], bool(self.is_server[r]),
                                   spec.batch if spec else 0, spec.threads if spec else 0,
                                   compute, pull, push, aggregate,
                                   max(0.0, own - compute - pull - push - aggregate), float(own)))
        return SimResult("ok", float(batch.sum() / np.sum(batch / own_s)), tuple(float(x) for x in times),
                         tuple(stats), bytes_per_iteration=self.network_bytes, events=events, **common)

    def timeline(self) -> Timeline:
        rows = [np.column_stack([np.full(w.size, t), w, p, v]) for t, w, p, v in self.readable]
        return Timeline(self.compute_start, self.compute_end, self.worker_end,
                        np.vstack(rows) if rows else np.empty((0, 4)),
                        np.array(self.update_log).reshape(-1, 6), np.vstack(self.pull_log or [np.empty((0, 5))]))


def claimed_time(rank: np.ndarray, start: np.ndarray, end: np.ndarray, kind: np.ndarray, n_ranks: int,
                 n_kinds: int) -> np.ndarray:
    """(n_ranks, n_kinds): per rank, how long intervals of each kind cover its time line, each instant
    counted once, for the lowest-numbered kind covering it."""
    out = np.zeros((n_ranks, n_kinds))
    keep = end > start
    rank, start, end, kind = rank[keep], start[keep], end[keep], kind[keep]
    if rank.size == 0:
        return out
    t = np.concatenate([start, end])
    r = np.concatenate([rank, rank])
    k = np.concatenate([kind, kind])
    d = np.concatenate([np.ones(rank.size, np.int64), -np.ones(rank.size, np.int64)])
    order = np.lexsort((-d, t, r))          # per rank by time; at one time, intervals open before they close
    t, r, k, d = t[order], r[order], k[order], d[order]
    delta = np.zeros((t.size, n_kinds), dtype=np.int64)
    delta[np.arange(t.size), k] = d
    covering = np.cumsum(delta, axis=0)[:-1] > 0           # after each event, until the next
    seg = t[1:] - t[:-1]
    top = np.argmax(covering, axis=1)
    valid = (r[1:] == r[:-1]) & covering.any(axis=1) & (seg > 0)
    np.add.at(out, (r[:-1][valid], top[valid]), seg[valid])
    return out
