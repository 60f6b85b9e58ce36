"""Which node each MPI rank stands for, in the three settings a schedule runs in.

- slurm:   each rank's node is its SLURMD_NODENAME (srun sets it per task);
- hosts:   each rank's node is its host name (mpirun with a host file);
- emulate: one machine stands for the whole cluster; ranks are numbered node by node as the schedule
           lists them (NodeSchedule.to_rank_schedule), and each behaves like its node.

In the first two the launcher decides where ranks land; the schedule's roles are then given to the
ranks found on each node, in rank order, so the same schedule file runs in all three settings.
"""

from __future__ import annotations

import os
import socket

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import NodeSchedule, RankPlacement
from hpcps.config.errors import ConfigError
from hpcps.config.schedule import Schedule, WorkerSpec

MODES = ("auto", "slurm", "hosts", "emulate")


def local_node_name(env: dict[str, str] | None = None) -> tuple[str, str]:
    """(node name, how it was found): SLURMD_NODENAME under srun, else the short host name."""
    env = os.environ if env is None else env
    if env.get("SLURMD_NODENAME"):
        return env["SLURMD_NODENAME"], "slurm"
    return socket.gethostname().split(".")[0], "hosts"


def choose_mode(requested: str, rank_names: list[str], how: list[str], cluster: Cluster) -> str:
    """auto: the launcher's placement if every rank landed on a node of the cluster, else emulation."""
    if requested not in MODES:
        raise ValueError(f"unknown placement mode {requested!r}; choose one of {', '.join(MODES)}")
    if requested != "auto":
        return requested
    if all(cluster.has(n) for n in rank_names):
        return "slurm" if all(h == "slurm" for h in how) else "hosts"
    return "emulate"


def place_on_launched(schedule: NodeSchedule, cluster: Cluster, rank_names: list[str]) -> RankPlacement:
    """Give the schedule's roles to the ranks the launcher put on each node (rank_names[r]: rank r's node)."""
    by_node: dict[str, list[int]] = {}
    for r, name in enumerate(rank_names):
        if not cluster.has(name):
            raise ConfigError(schedule.source, None,
                              f"rank {r} runs on {name!r}, which is not a node of cluster {cluster.name!r} "
                              f"({cluster.source})")
        by_node.setdefault(name, []).append(r)
    servers, workers = [], []
    for i, plan in enumerate(schedule.nodes):
        ranks = by_node.get(plan.name, [])
        if len(ranks) < plan.n_ranks:
            raise ConfigError(schedule.source, f"nodes[{i}]",
                              f"node {plan.name} needs {plan.n_ranks} rank(s) but the launcher started "
                              f"{len(ranks)} there; start the job with the schedule's task counts per node")
        for rank, w in zip(ranks, plan.workers):
            workers.append(WorkerSpec(rank, w.batch, w.threads, w.codec))
        if plan.server:
            servers.append(ranks[0])
    sched = Schedule(tuple(servers), tuple(sorted(workers, key=lambda w: w.rank)), schedule.source)
    return RankPlacement(sched, tuple(rank_names))


def place(schedule: NodeSchedule, cluster: Cluster, mode: str, rank_names: list[str]) -> RankPlacement:
    """The rank-level placement of schedule for the launched ranks (len(rank_names) of them)."""
    schedule.check_against(cluster)
    if mode == "emulate":
        placement = schedule.to_rank_schedule()
        if placement.n_ranks != len(rank_names):
            raise ConfigError(schedule.source, None,
                              f"the schedule needs {placement.n_ranks} ranks on one machine but "
                              f"{len(rank_names)} were launched; run mpirun -n {placement.n_ranks}")
        return placement
    return place_on_launched(schedule, cluster, rank_names)
