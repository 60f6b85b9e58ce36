"""One rank's emulation: its node's compute clock, and its messages on the shared fabric."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile

import numpy as np

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import RankPlacement
from hpcps.comm.waits import sleeping_barrier
from hpcps.emulate.fabric import FlowSpec, SharedFabric, emulated_clock
from hpcps.emulate.node import NodeClock, fastest_cpu_time
from hpcps.ps.plan import MessagePlan
from hpcps.sim.profile import WorkloadProfile


def default_dilation(cluster: Cluster, placement: RankPlacement, profile: WorkloadProfile | None = None) -> float:
    """Real seconds per emulated second: enough that the fastest node's steps, run here and sped up,
    still end after their real computation (with room for two ranks sharing one core). With the job's
    profile, each worker's step counts as its threads make it (the thread model), not at one thread:
    its real step here, on one thread at speed 1.0 (what the profile is calibrated to), over its
    emulated one, doubled."""
    used = {cluster.index(n) for n in placement.rank_nodes}
    need = 2.0 * max(cluster.nodes[i].type.speed for i in used)
    if profile is not None and placement.schedule.workers:
        from hpcps.sim.engine import compute_times
        emulated = compute_times(cluster, placement, profile)
        real = [profile.step_time(w.batch, 1, 1, 1) for w in placement.schedule.workers]
        need = max(need, 2.0 * max(r / e for r, e in zip(real, emulated)))
    return max(1.0, need)


def _fabric_dir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="hpcps-fabric-", dir=base)


class RankEmulator:
    """Built collectively on every rank of comm (rank 0 creates the shared file)."""

    def __init__(self, comm, cluster: Cluster, placement: RankPlacement, plan: MessagePlan,
                 profile: WorkloadProfile | None, dilation: float, network: str = "fabric"):
        """network: "fabric" delays messages between nodes on the shared fluid model; "real" leaves them to
        real links (a testbed, hpcps.testbed), which only compute is emulated for."""
        rank = comm.Get_rank()
        self.rank, self.dilation = rank, float(dilation)
        sched = placement.schedule
        node_of = [cluster.index(n) for n in placement.rank_nodes]
        self.node_of = node_of

        # Message templates: the plan's messages that cross between two emulated nodes (none on real links).
        templates, self._templates = [], {}
        for m in plan.messages():
            if network == "fabric" and node_of[m.src] != node_of[m.dst]:
                worker = m.dst if m.kind == "pull" else m.src
                self._templates[(m.kind, m.piece, worker)] = len(templates)
                templates.append(FlowSpec(m.src, m.dst, node_of[m.src], node_of[m.dst], m.nbytes))
        types = [n.type for n in cluster.nodes]
        capacity = np.array([t.nic_bytes_per_s for t in types])
        latency = np.array([t.latency_us * 1e-6 for t in types])

        path = None
        if rank == 0:
            self._dir = _fabric_dir()
            path = os.path.join(self._dir, "fabric")
            SharedFabric(path, templates, capacity, latency, dilation, create=True).close()
            open(os.path.join(self._dir, "turns"), "w").close()
        path = comm.bcast(path, root=0)
        self._turns = os.path.join(os.path.dirname(path), "turns")
        self.time = emulated_clock(self.dilation)     # emulated seconds, on a clock every rank shares
        self.fabric = SharedFabric(path, templates, capacity, latency, dilation)
        comm.Barrier()                   # every rank has it open: rank 0 may unlink the name at the end

        node = cluster.nodes[node_of[rank]]
        me = sched.worker(rank)
        factor = 1.0
        if me is not None and profile is not None:   # no profile (a custom workload): threads change nothing
            node_threads = sum(w.threads for w in sched.workers if node_of[w.rank] == node_of[rank])
            alone = profile.step_time(me.batch, 1, 1, 1)
            factor = profile.step_time(me.batch, me.threads, node.type.cores, node_threads) / alone
        self.node_name = node.name
        self.clock = NodeClock(self.dilation, node.type.speed, node.type.fixed_ms / 1e3, factor)

    def measure_reference(self, comm, step, key=None, known=None) -> float | None:
        """Collective: every worker times step() (its training step) with the machine to itself, the
        ranks taking turns, and from then on each of its steps is charged that time (docs/emulation.md).
        Workers whose steps are alike (the same key: the batch size) are all charged the least of their
        timings: one step costs the same on this machine whichever process runs it, yet identical
        timings differ between processes by 10-60% here. Ranks that wait sleep: in a lock, then in a
        polled barrier, not in MPI's spinning one.

        known: {key: seconds} recorded by earlier runs (hpcps/emulate/step_costs.py): a worker whose key
        is there is charged that and does not time its step."""
        ref = None
        recorded = step is not None and known is not None and key in known
        sleeping_barrier(comm)        # no rank still starting up (importing, loading data) meanwhile
        if step is not None and not recorded:
            with open(self._turns, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    ref = fastest_cpu_time(step)
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        sleeping_barrier(comm)
        everyone = comm.allgather((key, ref))
        if recorded:
            ref = known[key]
        elif ref is not None:
            ref = min(r for k, r in everyone if r is not None and k == key)
        if ref is not None:
            self.clock.reference_cpu_s = ref
        return ref

    def template(self, transfer, rank: int) -> int | None:
        """The fabric template of one of rank's transfers (an exchange Transfer), None if node-local."""
        if transfer.kind == "pull":
            worker = transfer.peer if transfer.direction == "send" else rank
        else:
            worker = rank if transfer.direction == "send" else transfer.peer
        return self._templates.get((transfer.kind, transfer.piece, worker))

    def post(self, transfer, iteration: int, rank: int) -> None:
        t = self.template(transfer, rank)
        if t is not None:
            self.fabric.post(t, iteration, "src" if transfer.direction == "send" else "dst")

    def arrived(self, template: int, iteration: int) -> bool:
        """Whether the message has arrived in the emulated network (never blocks)."""
        return self.fabric.arrived(template, iteration)

    def close(self, comm) -> None:
        self.fabric.close()
        comm.Barrier()
        if self.rank == 0:
            shutil.rmtree(self._dir, ignore_errors=True)
