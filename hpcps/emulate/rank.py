"""One rank's emulation: its node's compute clock, and its messages on the shared fabric."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time

import numpy as np

from hpcps.cluster.description import Cluster
from hpcps.cluster.placement import RankPlacement
from hpcps.emulate.fabric import FlowSpec, SharedFabric, emulated_clock
from hpcps.emulate.node import NodeClock, fastest_cpu_time
from hpcps.ps.sharding import Shard
from hpcps.sim.profile import WorkloadProfile

BYTES_PER_ELEMENT = 4


def default_dilation(cluster: Cluster, placement: RankPlacement) -> float:
    """Real seconds per emulated second: enough that the fastest node's steps, run here and sped up,
    still end after their real computation (with room for two ranks sharing one core)."""
    used = {cluster.index(n) for n in placement.rank_nodes}
    return max(1.0, 2.0 * max(cluster.nodes[i].type.speed for i in used))


def _sleeping_barrier(comm, poll_s: float = 1e-3) -> None:
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll_s)


def _fabric_dir() -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="hpcps-fabric-", dir=base)


class RankEmulator:
    """Built collectively on every rank of comm (rank 0 creates the shared file)."""

    def __init__(self, comm, cluster: Cluster, placement: RankPlacement, shards: list[Shard],
                 profile: WorkloadProfile | None, dilation: float, network: str = "fabric"):
        """network: "fabric" delays messages between nodes on the shared fluid model; "real" leaves them to
        real links (a testbed, hpcps.testbed), which only compute is emulated for."""
        rank = comm.Get_rank()
        self.rank, self.dilation = rank, float(dilation)
        sched = placement.schedule
        node_of = [cluster.index(n) for n in placement.rank_nodes]
        self.node_of = node_of

        # Message templates, numbered like hpcps.sim: pulls (shard-major), then pushes.
        templates, self.template = [], {}
        live = [s for s in shards if s.size > 0]
        for kind in ("pull", "push"):
            for s in live:
                for w in sched.workers:
                    src, dst = (s.server, w.rank) if kind == "pull" else (w.rank, s.server)
                    if network == "fabric" and src != dst and node_of[src] != node_of[dst]:
                        self.template[(kind, s.index, w.rank)] = len(templates)
                        templates.append(FlowSpec(src, dst, node_of[src], node_of[dst], BYTES_PER_ELEMENT * s.size))
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

    def measure_reference(self, comm, step, key=None) -> float | None:
        """Collective: every worker times step() (its training step) with the machine to itself, the
        ranks taking turns, and from then on each of its steps is charged that time (docs/emulation.md).
        Workers whose steps are alike (the same key: the batch size) are all charged the least of their
        timings: one step costs the same on this machine whichever process runs it, yet identical
        timings differ between processes by 10-60% here. Ranks that wait sleep: in a lock, then in a
        polled barrier, not in MPI's spinning one."""
        ref = None
        _sleeping_barrier(comm)        # no rank still starting up (importing, loading data) meanwhile
        if step is not None:
            with open(self._turns, "r+") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    ref = fastest_cpu_time(step)
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        _sleeping_barrier(comm)
        everyone = comm.allgather((key, ref))
        if ref is not None:
            ref = min(r for k, r in everyone if r is not None and k == key)
            self.clock.reference_cpu_s = ref
        return ref

    def _key(self, transfer) -> tuple[int, str] | None:
        """The fabric template of one of this rank's transfers and this rank's side of it."""
        if transfer.kind == "pull":
            worker = transfer.peer if transfer.direction == "send" else self.rank
        else:
            worker = self.rank if transfer.direction == "send" else transfer.peer
        t = self.template.get((transfer.kind, transfer.shard, worker))
        return None if t is None else (t, "src" if transfer.direction == "send" else "dst")

    def post(self, transfers, iteration: int) -> None:
        for tr in transfers:
            key = self._key(tr)
            if key is not None:
                self.fabric.post(key[0], iteration, key[1])

    def wait(self, transfers, iteration: int) -> list[float]:
        """Wait until each transfer has arrived in the emulated network; their arrival times (emulated),
        in the order given. Node-local transfers arrive when the real copy did."""
        order = sorted(range(len(transfers)), key=lambda i: self._due(transfers[i], iteration))
        ends = [0.0] * len(transfers)
        for i in order:
            key = self._key(transfers[i])
            if key is not None:
                self.fabric.wait(key[0], iteration)
            ends[i] = self.time()
        return ends

    def _due(self, transfer, iteration: int) -> float:
        key = self._key(transfer)
        return -1.0 if key is None else self.fabric.projected_done(key[0], iteration)

    def close(self, comm) -> None:
        self.fabric.close()
        comm.Barrier()
        if self.rank == 0:
            shutil.rmtree(self._dir, ignore_errors=True)
