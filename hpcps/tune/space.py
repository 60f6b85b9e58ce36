"""The search space of a cluster's schedules, encoded for Emukit.

Per node (in cluster order) four parameters:

    server_<i>   0 or 1     hosts a parameter-server shard
    worker_<i>   0 or 1     runs a worker
    share_<i>    [0, 1]     the worker's share of the global batch, relative to the other workers
    threads_<i>  1..2*cores the worker's threads (past the node's cores is allowed: it is slower,
                            and the tuner should learn that rather than be told)

and, when the run may choose among more than one push codec (ScheduleSpace.codecs), a fifth:

    codec_<i>    0..K-1     the worker's push codec, an index into codecs; 0 is the job's own
                            ([exchange] codec), which a schedule leaves unnamed (a worker without a codec
                            of its own); the others are named in its worker entry

A point decodes to a NodeSchedule through repair(), which makes any point runnable: at least one
server (the best-connected node), at least one worker (the fastest node), more workers (the fastest
nodes with room) when the chosen ones cannot hold the global batch, integer batches summing to the
global batch, none empty, none over its node's memory. A point that cannot be repaired (the global
batch does not fit in the memory of all nodes together) raises InfeasibleSchedule before it costs a
trial.

and, when the run may choose among more than one synchronisation (ScheduleSpace.syncs, tune --syncs),
one parameter for the whole schedule after every node's:

    sync        0..M-1      the training.sync and staleness of the run, an index into syncs (names as
                            hpcps.config.job.sync_name gives them: bsp, asp, sspN); 0 is the job's own

With one codec (the default: the job's own) and one synchronisation (the job's) the space is exactly the
four parameters per node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodePlan, NodeSchedule, NodeWorker, split_proportional

FIELDS = ("server", "worker", "share", "threads")          # per node in every space
CODEC_FIELD = "codec"                                        # per node where the codec is tuned
SYNC_FIELD = "sync"                                          # once per point where the synchronisation is tuned


class InfeasibleSchedule(ValueError):
    """No schedule near the point can run: say why."""


def max_threads(cores: int) -> int:
    return max(2, 2 * cores)


@dataclass(frozen=True)
class ScheduleSpace:
    cluster: Cluster
    global_batch: int
    max_batch: tuple[int, ...] | None = None   # per node: the largest batch its memory holds (None: no limit)
    # The push codecs a worker may use, the job's own first (what a worker without a codec of its own
    # pushes with); with more than one, each node's worker gets a codec parameter.
    codecs: tuple[str, ...] = ("none",)
    # The synchronisations the run may choose (bsp, asp, sspN), the job's own first; with more than one,
    # the point ends with a sync parameter.
    syncs: tuple[str, ...] = ("bsp",)

    def __post_init__(self):
        if not self.codecs or len(set(self.codecs)) != len(self.codecs):
            raise ValueError(f"codecs must be distinct names, the job's first; got {self.codecs!r}")
        if not self.syncs or len(set(self.syncs)) != len(self.syncs):
            raise ValueError(f"syncs must be distinct names, the job's first; got {self.syncs!r}")

    @property
    def tunes_syncs(self) -> bool:
        return len(self.syncs) > 1

    @property
    def tunes_codecs(self) -> bool:
        return len(self.codecs) > 1

    @property
    def fields(self) -> tuple[str, ...]:
        """The parameters of one node, in the order a point holds them."""
        return FIELDS + ((CODEC_FIELD,) if self.tunes_codecs else ())

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    @property
    def node_dims(self) -> int:
        """The dimensions of every node's parameters, which come first in a point."""
        return self.n_fields * len(self.cluster)

    @property
    def n_dims(self) -> int:
        return self.node_dims + (1 if self.tunes_syncs else 0)

    def node_fields(self, points: np.ndarray) -> np.ndarray:
        """(..., n_nodes, n_fields): the per-node parameters of points (..., n_dims), as a copy."""
        p = np.asarray(points, dtype=float)
        return p[..., :self.node_dims].reshape(p.shape[:-1] + (len(self.cluster), self.n_fields)).copy()

    def with_node_fields(self, fields: np.ndarray, syncs: np.ndarray | int = 0) -> np.ndarray:
        """Points (..., n_dims) from per-node parameters (..., n_nodes, n_fields) and, where the space tunes
        the synchronisation, sync indices (an int or one per point)."""
        fields = np.asarray(fields, dtype=float)
        flat = fields.reshape(fields.shape[:-2] + (self.node_dims,))
        if not self.tunes_syncs:
            return flat
        return np.concatenate([flat, np.broadcast_to(np.asarray(syncs, dtype=float), flat.shape[:-1])[..., None]],
                              axis=-1)

    def sync_index(self, point: np.ndarray) -> int:
        """The sync parameter of a point, rounded into range (0, the job's, where the space has none)."""
        if not self.tunes_syncs:
            return 0
        return int(np.clip(round(float(np.asarray(point, dtype=float).reshape(-1)[-1])), 0, len(self.syncs) - 1))

    def sync_of(self, point: np.ndarray) -> str:
        """The synchronisation a point runs under (a name: bsp, asp, sspN)."""
        return self.syncs[self.sync_index(point)]

    def parameter_space(self):
        """The Emukit ParameterSpace: (n_dims,) points, n_fields parameters per node."""
        from emukit.core import ContinuousParameter, DiscreteParameter, ParameterSpace
        params = []
        for i, node in enumerate(self.cluster.nodes):
            params += [DiscreteParameter(f"server_{i}", [0, 1]), DiscreteParameter(f"worker_{i}", [0, 1]),
                       ContinuousParameter(f"share_{i}", 0.0, 1.0),
                       DiscreteParameter(f"threads_{i}", list(range(1, max_threads(node.type.cores) + 1)))]
            if self.tunes_codecs:
                params.append(DiscreteParameter(f"codec_{i}", list(range(len(self.codecs)))))
        if self.tunes_syncs:
            params.append(DiscreteParameter(SYNC_FIELD, list(range(len(self.syncs)))))
        return ParameterSpace(params)

    def codec_index(self, codec: str | None) -> int:
        """The codec parameter's value for a worker's codec (None: the job's)."""
        name = self.codecs[0] if codec is None else codec
        if name not in self.codecs:
            raise ValueError(f"codec {name!r} is not one this run may choose ({', '.join(self.codecs)})")
        return self.codecs.index(name)

    def codec_name(self, index: float) -> str | None:
        """A worker's codec for a codec parameter's value, as its schedule entry names it: None for the
        job's own."""
        k = int(np.clip(round(float(index)), 0, len(self.codecs) - 1))
        return None if k == 0 else self.codecs[k]

    def encode(self, schedule: NodeSchedule, sync: str | None = None) -> np.ndarray:
        """A point (n_dims,) for a schedule with at most one worker per node, run under sync (None: the
        job's). Without a codec parameter a worker's codec is not encoded; with one, a codec this space
        does not offer is a ValueError; so is a sync it does not offer."""
        if sync is not None and sync not in self.syncs:
            raise ValueError(f"sync {sync!r} is not one this run may choose ({', '.join(self.syncs)})")
        point = np.zeros((len(self.cluster), self.n_fields))
        point[:, 2] = 0.0
        point[:, 3] = 1
        for plan in schedule.nodes:
            i = self.cluster.index(plan.name)
            if len(plan.workers) > 1:
                raise ValueError(f"node {plan.name} runs {len(plan.workers)} workers; "
                                 "the search space has one per node")
            point[i, 0] = 1 if plan.server else 0
            if plan.workers:
                point[i, 1] = 1
                point[i, 2] = plan.workers[0].batch / self.global_batch
                point[i, 3] = min(plan.workers[0].threads, max_threads(self.cluster.nodes[i].type.cores))
                if self.tunes_codecs:
                    point[i, 4] = self.codec_index(plan.workers[0].codec)
        return self.with_node_fields(point, self.syncs.index(sync) if sync is not None else 0)

    def decode(self, point: np.ndarray) -> NodeSchedule:
        """The repaired schedule of a point (n_dims,). Raises InfeasibleSchedule."""
        p = self.node_fields(np.asarray(point, dtype=float).reshape(-1))
        nodes = self.cluster.nodes
        servers = p[:, 0] >= 0.5
        workers = p[:, 1] >= 0.5
        shares = np.clip(p[:, 2], 0.0, 1.0)
        threads = [int(np.clip(round(t), 1, max_threads(n.type.cores))) for t, n in zip(p[:, 3], nodes)]
        if not servers.any():
            servers[max(range(len(nodes)), key=lambda i: (nodes[i].type.nic_gbps, -i))] = True
        if not workers.any():
            workers[max(range(len(nodes)), key=lambda i: (nodes[i].type.speed, -i))] = True
        if self.max_batch is not None:
            # Workers whose memory cannot hold the batch between them: add the fastest nodes with room.
            for i in self._by_speed():
                if sum(self.max_batch[j] for j in range(len(nodes)) if workers[j]) >= self.global_batch:
                    break
                if not workers[i] and self.max_batch[i] > 0:
                    workers[i] = True
        batches = self._batches(workers, shares)
        plans = []
        for i, node in enumerate(nodes):
            codec = self.codec_name(p[i, 4]) if self.tunes_codecs else None
            ws = (NodeWorker(int(batches[i]), threads[i], codec),) if batches[i] > 0 else ()
            if ws or servers[i]:
                plans.append(NodePlan(node.name, bool(servers[i]), ws))
        return NodeSchedule(tuple(plans), f"<{self.cluster.name} schedule>")

    def _by_speed(self) -> list[int]:
        nodes = self.cluster.nodes
        return sorted(range(len(nodes)), key=lambda i: (-nodes[i].type.speed, i))

    def _batches(self, workers: np.ndarray, shares: np.ndarray) -> np.ndarray:
        """Integer batches for the active workers, in proportion to shares, each >= 1 and within memory."""
        active = [i for i in range(len(workers)) if workers[i]]
        # An active worker's share is at least a small floor: "runs a worker" wins over a zero share.
        weights = [max(shares[i], 1e-3) for i in active]
        if len(active) > self.global_batch:            # more workers than samples: keep the largest shares
            keep = sorted(range(len(active)), key=lambda j: (-weights[j], active[j]))[: self.global_batch]
            active = [active[j] for j in sorted(keep)]
            weights = [max(shares[i], 1e-3) for i in active]
        caps = [self.max_batch[i] if self.max_batch else self.global_batch for i in active]
        if sum(caps) < self.global_batch:
            raise InfeasibleSchedule(f"the workers' memory holds {sum(caps)} samples, the global batch is "
                                     f"{self.global_batch}")
        parts = split_proportional(self.global_batch, weights)
        parts = [max(1, b) for b in parts]
        # Take back what the floor of one added, from the largest batches.
        while sum(parts) > self.global_batch:
            j = max(range(len(parts)), key=lambda j: parts[j])
            parts[j] -= 1
        # Move what overflows a node's memory to workers with room, in proportion to their weights.
        for _ in range(len(parts)):
            over = sum(max(0, b - c) for b, c in zip(parts, caps))
            if over == 0:
                break
            parts = [min(b, c) for b, c in zip(parts, caps)]
            room = [j for j in range(len(parts)) if parts[j] < caps[j]]
            extra = split_proportional(over, [weights[j] for j in room])
            for j, e in zip(room, extra):
                parts[j] += e
        out = np.zeros(len(workers), dtype=int)
        out[active] = parts
        return out

    def repair(self, point: np.ndarray) -> np.ndarray:
        """The point of the repaired schedule (n_dims,): what a trial of point really runs."""
        return self.encode(self.decode(point), self.sync_of(point))

    def random_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, n_dims) random points, before repair (codecs and syncs uniform over those offered)."""
        pts = np.zeros((n, len(self.cluster), self.n_fields))
        pts[:, :, 0] = rng.random((n, len(self.cluster))) < 0.3
        pts[:, :, 1] = rng.random((n, len(self.cluster))) < 0.8
        pts[:, :, 2] = rng.random((n, len(self.cluster)))
        for i, node in enumerate(self.cluster.nodes):
            pts[:, i, 3] = rng.integers(1, max_threads(node.type.cores) + 1, size=n)
        if self.tunes_codecs:          # drawn last: a space without codecs draws what it always drew
            pts[:, :, 4] = rng.integers(0, len(self.codecs), size=(n, len(self.cluster)))
        # Drawn after everything else, so that a space without syncs draws what it always drew.
        syncs = rng.integers(0, len(self.syncs), size=n) if self.tunes_syncs else 0
        return self.with_node_fields(pts, syncs)


@dataclass(frozen=True)
class DecodedBatch:
    """Many points read the way decode() reads them, as arrays (n_points, n_nodes), for models that score
    thousands of candidates at once. Batches are real numbers in proportion to the shares, capped by
    memory: for a repaired point they are exactly the schedule's integer batches."""
    servers: np.ndarray      # bool
    batches: np.ndarray      # float, 0 where no worker
    threads: np.ndarray      # int
    feasible: np.ndarray     # (n_points,) bool: the workers' memory holds the global batch
    codecs: np.ndarray       # int: index into the space's codecs (0, the job's, where no worker)
    syncs: np.ndarray        # (n_points,) int: index into the space's syncs (0, the job's, where not tuned)

    @property
    def workers(self) -> np.ndarray:
        return self.batches > 0


def decode_many(space: ScheduleSpace, points: np.ndarray) -> DecodedBatch:
    """decode() for (n_points, n_dims) points at once, without rounding batches to integers."""
    n_nodes = len(space.cluster)
    flat = np.asarray(points, dtype=float).reshape(-1, space.n_dims)
    p = space.node_fields(flat)
    n = p.shape[0]
    nodes = space.cluster.nodes
    servers = p[:, :, 0] >= 0.5
    workers = p[:, :, 1] >= 0.5
    best_net = max(range(n_nodes), key=lambda i: (nodes[i].type.nic_gbps, -i))
    fastest = max(range(n_nodes), key=lambda i: (nodes[i].type.speed, -i))
    servers[~servers.any(axis=1), best_net] = True
    workers[~workers.any(axis=1), fastest] = True
    top = np.array([max_threads(node.type.cores) for node in nodes])
    threads = np.clip(np.rint(p[:, :, 3]), 1, top).astype(int)
    weights = np.where(workers, np.maximum(np.clip(p[:, :, 2], 0.0, 1.0), 1e-3), 0.0)
    g = float(space.global_batch)
    batches = g * weights / weights.sum(axis=1, keepdims=True)
    feasible = np.ones(n, dtype=bool)
    if space.max_batch is not None:
        cap = np.asarray(space.max_batch, dtype=float)
        for i in space._by_speed():
            short = (np.where(workers, cap[None, :], 0.0).sum(axis=1) < space.global_batch) & ~workers[:, i]
            if cap[i] > 0 and short.any():
                workers[short, i] = True
        weights = np.where(workers, np.maximum(np.clip(p[:, :, 2], 0.0, 1.0), 1e-3), 0.0)
        batches = g * weights / weights.sum(axis=1, keepdims=True)
        caps = np.where(workers, cap[None, :], 0.0)
        feasible = caps.sum(axis=1) >= g
        for _ in range(n_nodes):
            over = np.maximum(batches - caps, 0.0).sum(axis=1)
            if not (over > 1e-9).any():
                break
            batches = np.minimum(batches, caps)
            room = np.where(batches < caps, weights, 0.0)
            total = room.sum(axis=1, keepdims=True)
            batches = batches + np.divide(over[:, None] * room, total, out=np.zeros_like(room), where=total > 0)
    codecs = np.zeros(batches.shape, dtype=int)
    if space.tunes_codecs:
        codecs = np.where(batches > 0, np.clip(np.rint(p[:, :, 4]), 0, len(space.codecs) - 1), 0).astype(int)
    syncs = np.zeros(n, dtype=int)
    if space.tunes_syncs:
        syncs = np.clip(np.rint(flat[:, -1]), 0, len(space.syncs) - 1).astype(int)
    return DecodedBatch(servers, batches, threads, feasible, codecs, syncs)
