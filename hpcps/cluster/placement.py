"""Node-level schedules: what each node of a cluster runs, and how that becomes ranks.

A node schedule says, per node, whether it hosts a parameter-server shard and which workers it runs
(each with its batch and threads). The training runtime works with rank-level schedules
(hpcps.config.schedule.Schedule); to_rank_schedule() numbers the ranks node by node and says which node
each rank stands for. Format (docs/cluster.md)::

    [[nodes]]
    name = "n1"
    server = true
    workers = [{batch = 32, threads = 2}]

    [[nodes]]
    name = "n2"
    workers = [{batch = 16}, {batch = 16}]

Nodes of the cluster that the schedule does not list run nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcps.cluster.description import Cluster
from hpcps.config import limits
from hpcps.config.errors import ConfigError
from hpcps.config.schedule import Schedule, WorkerSpec, parse_schedule, split_evenly
from hpcps.config.toml_schema import Key, option, read_toml, spec_of, take_table
from hpcps.config.toml_writer import dumps

# balanced() puts one server per this many nodes: the same ratio as the rank-level default schedule.
NODES_PER_SERVER = 4


@dataclass(frozen=True)
class NodeWorker:
    batch: int = option(gt=0, le=limits.MAX_BATCH)
    threads: int = option(1, gt=0, le=limits.MAX_THREADS)


@dataclass(frozen=True)
class NodePlan:
    """What one node runs: a server shard or not, and zero or more workers."""
    name: str
    server: bool = False
    workers: tuple[NodeWorker, ...] = ()

    @property
    def n_ranks(self) -> int:
        return len(self.workers) if self.workers else (1 if self.server else 0)


@dataclass(frozen=True)
class RankPlacement:
    """A rank-level schedule and the node each rank stands for (rank_nodes[rank] is a node name)."""
    schedule: Schedule
    rank_nodes: tuple[str, ...]

    @property
    def n_ranks(self) -> int:
        return len(self.rank_nodes)

    def check_threads(self, cluster: Cluster) -> None:
        """ConfigError if a worker asks for more threads than its node can sensibly run."""
        for i, w in enumerate(self.schedule.workers):
            node = cluster.node(self.rank_nodes[w.rank])
            if w.threads > thread_limit(node.type.cores):
                raise ConfigError(self.schedule.source, f"workers[{i}].threads",
                                  _threads_message(w.threads, node.name, node.type.cores))


def thread_limit(cores: int) -> int:
    """The most threads one worker may ask for on a node of this many cores."""
    return min(limits.MAX_THREADS, limits.THREADS_PER_CORE * cores)


def _threads_message(threads: int, node: str, cores: int) -> str:
    return (f"must be <= {thread_limit(cores)} on node {node} ({limits.THREADS_PER_CORE} per core of its {cores}, "
            f"at most {limits.MAX_THREADS}), got {threads}")


@dataclass(frozen=True)
class NodeSchedule:
    nodes: tuple[NodePlan, ...]
    source: str = "<node schedule>"

    @property
    def global_batch(self) -> int:
        return sum(w.batch for p in self.nodes for w in p.workers)

    @property
    def n_ranks(self) -> int:
        return sum(p.n_ranks for p in self.nodes)

    def check_against(self, cluster: Cluster, global_batch: int | None = None) -> None:
        """Raise ConfigError if a node is not in cluster, or the batches do not sum to global_batch."""
        for i, p in enumerate(self.nodes):
            if not cluster.has(p.name):
                shown = ", ".join(cluster.names[:8]) + (", ..." if len(cluster) > 8 else "")
                raise ConfigError(self.source, f"nodes[{i}].name",
                                  f"node {p.name!r} is not in cluster {cluster.name!r} ({cluster.source}); "
                                  f"its nodes are {shown}")
        for i, p in enumerate(self.nodes):
            cores = cluster.node(p.name).type.cores
            for j, w in enumerate(p.workers):
                if w.threads > thread_limit(cores):
                    raise ConfigError(self.source, f"nodes[{i}].workers[{j}].threads",
                                      _threads_message(w.threads, p.name, cores))
        if global_batch is not None and self.global_batch != global_batch:
            raise ConfigError(self.source, "nodes.workers.batch",
                              f"worker batches sum to {self.global_batch} but the job's training.global_batch is "
                              f"{global_batch}; they must be equal")

    def to_rank_schedule(self) -> RankPlacement:
        """Ranks numbered node by node in the order listed. A node's server shares the rank of the node's
        first worker (so the server's local pushes and pulls are copies); a node with a server and no
        worker gets a rank of its own. Servers keep node order, which is shard order."""
        servers, workers, rank_nodes = [], [], []
        for p in self.nodes:
            first = len(rank_nodes)
            for w in p.workers:
                workers.append(WorkerSpec(len(rank_nodes), w.batch, w.threads))
                rank_nodes.append(p.name)
            if p.server:
                if not p.workers:
                    rank_nodes.append(p.name)
                servers.append(first)
        return RankPlacement(Schedule(tuple(servers), tuple(workers), self.source), tuple(rank_nodes))

    def to_toml(self) -> str:
        return dumps(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [{"name": p.name, "server": p.server,
                           "workers": [{"batch": w.batch, "threads": w.threads} for w in p.workers]}
                          for p in self.nodes]}


_TOP_SPEC = {"nodes": Key(list)}
_NODE_SPEC = spec_of(NodePlan)
_WORKER_SPEC = spec_of(NodeWorker)


def parse_node_schedule(table: dict[str, Any], source: str) -> NodeSchedule:
    """Validate a node schedule table. Raises ConfigError naming source and key."""
    top = take_table(source, "", table, _TOP_SPEC)
    plans, seen = [], {}
    for i, entry in enumerate(top["nodes"]):
        prefix = f"nodes[{i}]"
        e = take_table(source, prefix, entry, _NODE_SPEC)
        if e["name"] in seen:
            raise ConfigError(source, f"{prefix}.name",
                              f"node {e['name']!r} is listed twice (also nodes[{seen[e['name']]}]); "
                              "list each node once with all its workers")
        seen[e["name"]] = i
        workers = tuple(NodeWorker(**take_table(source, f"{prefix}.workers[{j}]", w, _WORKER_SPEC))
                        for j, w in enumerate(e["workers"]))
        plans.append(NodePlan(e["name"], e["server"], workers))
    if not any(p.server for p in plans):
        raise ConfigError(source, "nodes.server", "no parameter server: set server = true on at least one node")
    if not any(p.workers for p in plans):
        raise ConfigError(source, "nodes.workers",
                          "no worker: give at least one node workers = [{batch = N}]")
    total = sum(w.batch for p in plans for w in p.workers)
    if total > limits.MAX_BATCH:
        raise ConfigError(source, "nodes.workers.batch",
                          f"worker batches sum to {total}; a global batch must be <= {limits.MAX_BATCH}")
    return NodeSchedule(tuple(plans), source)


def load_node_schedule(path: str | Path) -> NodeSchedule:
    return parse_node_schedule(read_toml(path), str(path))


def write_node_schedule(schedule: NodeSchedule, path: str | Path, flag: str | None = None) -> None:
    """Write schedule.to_toml() to path atomically (hpcps.io.outputs), so a reader never sees half a file."""
    from hpcps.io.outputs import write_text
    write_text(path, schedule.to_toml(), flag)


def place_rank_schedule(schedule: Schedule, cluster: Cluster) -> RankPlacement:
    """A rank-level schedule on a cluster: rank r stands for node r mod len(cluster), in file order,
    which is how mpirun and srun fill one rank per node before coming back to the first node."""
    n = schedule.n_ranks_needed
    return RankPlacement(schedule, tuple(cluster.nodes[r % len(cluster)].name for r in range(n)))


def load_any_schedule(path: str | Path) -> NodeSchedule | Schedule:
    """A schedule file of either kind: a node schedule (it has [[nodes]]) or a rank-level schedule
    (servers and [[workers]]). Raises ConfigError on bad input."""
    table = read_toml(path)
    if "nodes" in table:
        return parse_node_schedule(table, str(path))
    return parse_schedule(table, str(path))


def placement_of(schedule: NodeSchedule | Schedule, cluster: Cluster,
                 global_batch: int | None = None) -> RankPlacement:
    """Either kind of schedule as ranks on cluster, after checking it against cluster and global_batch."""
    if isinstance(schedule, NodeSchedule):
        schedule.check_against(cluster, global_batch)
        return schedule.to_rank_schedule()
    if global_batch is not None:
        schedule.check_against(schedule.n_ranks_needed, global_batch)
    placement = place_rank_schedule(schedule, cluster)
    placement.check_threads(cluster)
    return placement


def load_placement(path: str | Path, cluster: Cluster, global_batch: int | None = None) -> RankPlacement:
    """load_any_schedule(path) placed on cluster. Raises ConfigError on bad input or a mismatch."""
    return placement_of(load_any_schedule(path), cluster, global_batch)


def split_proportional(total: int, weights: list[float]) -> list[int]:
    """total split into non-negative integers in proportion to weights (largest remainder first,
    ties to the earlier entry); the parts sum to total."""
    if total < 0 or not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"cannot split {total} by weights {weights}")
    s = sum(weights)
    exact = [total * w / s for w in weights]
    parts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in order[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _plans(cluster: Cluster, batches: list[int], servers: set[str], threads: int) -> NodeSchedule:
    plans = []
    for node, b in zip(cluster.nodes, batches):
        workers = (NodeWorker(b, threads),) if b > 0 else ()
        if workers or node.name in servers:
            plans.append(NodePlan(node.name, node.name in servers, workers))
    return NodeSchedule(tuple(plans), f"<schedule for {cluster.name}>")


def naive(cluster: Cluster, global_batch: int) -> NodeSchedule:
    """One server on the first node, one single-threaded worker per node with equal batches (nodes past
    global_batch get none, so no worker has an empty batch)."""
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    batches = split_evenly(global_batch, min(len(cluster), global_batch))
    batches += [0] * (len(cluster) - len(batches))
    return _plans(cluster, batches, {cluster.nodes[0].name}, 1)


def balanced(cluster: Cluster, global_batch: int) -> NodeSchedule:
    """One single-threaded worker per node with a batch in proportion to the node's speed, so every
    worker computes for about as long; one server per NODES_PER_SERVER nodes on the nodes with the
    fastest network (ties in file order), since every server's NIC carries a shard to and from every
    worker."""
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    batches = split_proportional(global_batch, [n.type.speed for n in cluster.nodes])
    n_servers = math.ceil(len(cluster) / NODES_PER_SERVER)
    by_network = sorted(range(len(cluster)), key=lambda i: (-cluster.nodes[i].type.nic_gbps, i))
    servers = {cluster.nodes[i].name for i in by_network[:n_servers]}
    return _plans(cluster, batches, servers, 1)
