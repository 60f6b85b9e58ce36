"""Moving shards between servers and workers: non-blocking point-to-point, one message per shard and
peer, straight from and into the flat buffers (never pickled objects).

pull(): every server sends its shard to every worker; push(): every worker sends each shard's slice of
its gradient to that shard's server. A rank that is both server and worker posts both sides before
waiting, so colocation cannot deadlock, and serves itself by a copy instead of a message.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcps.comm.buffers import ExchangeBuffer, read_to_host, write_from_host
from hpcps.config.schedule import WorkerSpec
from hpcps.ps.server import ServerShard
from hpcps.ps.sharding import Shard

PULL_TAG, PUSH_TAG, GATHER_TAG = 1 << 12, 2 << 12, 3 << 12
# How long a rank that waits sleeps between polls when ranks outnumber cores: short next to a
# message's time on shared memory, long enough to hand the core to a rank that has work.
SLEEP_WAIT_S = 20e-6


def ranks_outnumber_cores(comm: MPI.Comm) -> bool:
    """Whether this node runs more ranks than this process may use cores."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.Get_size() > len(os.sched_getaffinity(0))
    finally:
        local.Free()


@dataclass(frozen=True)
class Transfer:
    """What one posted request moves; the tracer records it when the request completes."""
    kind: str        # "pull" or "push"
    direction: str   # "send", "recv", or "local" (a rank serving itself by a copy)
    shard: int
    peer: int
    nbytes: int


class ParameterExchange:
    def __init__(self, comm: MPI.Comm, shards: list[Shard], workers: tuple[WorkerSpec, ...],
                 params: ExchangeBuffer | None, grads: ExchangeBuffer | None,
                 served: dict[int, ServerShard], recorder=None, *, clock=time.perf_counter,
                 emulator=None, sleep_wait: bool | None = None):
        self.comm, self.rank = comm, comm.Get_rank()
        self.shards = [s for s in shards if s.size > 0]
        self.workers = workers
        self.worker_row = {w.rank: i for i, w in enumerate(workers)}
        self.is_worker = self.rank in self.worker_row
        self.params, self.grads = params, grads
        self.served = served                      # shard index -> state, for shards this rank serves
        self.recorder = recorder
        self.clock = clock                        # emulated runs pass the dilated clock
        self.emulator = emulator                  # hpcps.emulate.rank.RankEmulator, or None
        self.iteration = 0                        # set by the training loop: emulated messages are per iteration
        # MPICH's Waitall spins; with more ranks than cores the spinning steals the cores that the
        # ranks being waited for need (measured: 5-14% more CPU per iteration, 4 ranks on 2 cores).
        self.sleep_wait = ranks_outnumber_cores(comm) if sleep_wait is None else sleep_wait

    def pull(self) -> None:
        t_post = self.clock()
        reqs, meta = [], []
        if self.is_worker:
            for s in self.shards:
                if s.server != self.rank:
                    reqs.append(self.comm.Irecv(self.params.view(s.start, s.stop), source=s.server, tag=PULL_TAG + s.index))
                    meta.append(Transfer("pull", "recv", s.index, s.server, 4 * s.size))
        for s in self.shards:
            state = self.served.get(s.index)
            if state is None:
                continue
            for w in self.workers:
                if w.rank != self.rank:
                    reqs.append(self.comm.Isend(state.params, dest=w.rank, tag=PULL_TAG + s.index))
                    meta.append(Transfer("pull", "send", s.index, w.rank, 4 * s.size))
        if self.is_worker:
            for s in self.shards:
                if s.server == self.rank:
                    t_copy = self.clock()
                    state = self.served[s.index]
                    if not state.in_worker_buffer:
                        write_from_host(self.params, s.start, s.stop, state.params)
                    if self.recorder is not None:
                        self.recorder.transfer(Transfer("pull", "local", s.index, self.rank, 4 * s.size),
                                               t_copy, self.clock())
        self._wait(reqs, meta, t_post)
        if self.is_worker:
            for s in self.shards:
                if s.server != self.rank:
                    self.params.after_recv(s.start, s.stop)

    def push(self) -> None:
        t_post = self.clock()
        reqs, meta = [], []
        for s in self.shards:
            state = self.served.get(s.index)
            if state is None:
                continue
            for w in self.workers:
                if w.rank != self.rank:
                    row = state.pushes[self.worker_row[w.rank]]
                    reqs.append(self.comm.Irecv(row, source=w.rank, tag=PUSH_TAG + s.index))
                    meta.append(Transfer("push", "recv", s.index, w.rank, 4 * s.size))
        if self.is_worker:
            for s in self.shards:
                if s.server != self.rank:
                    self.grads.before_send(s.start, s.stop)
                    reqs.append(self.comm.Isend(self.grads.view(s.start, s.stop), dest=s.server, tag=PUSH_TAG + s.index))
                    meta.append(Transfer("push", "send", s.index, s.server, 4 * s.size))
            for s in self.shards:
                if s.server == self.rank:
                    state = self.served[s.index]
                    t_copy = self.clock()
                    if state.local_grad is None:
                        read_to_host(self.grads, s.start, s.stop, state.pushes[self.worker_row[self.rank]])
                    if self.recorder is not None:
                        self.recorder.transfer(Transfer("push", "local", s.index, self.rank, 4 * s.size),
                                               t_copy, self.clock())
        self._wait(reqs, meta, t_post)

    def _wait(self, reqs: list, meta: list[Transfer], t_post: float) -> None:
        if self.emulator is not None:
            self.emulator.post(meta, self.iteration)
            self._wait_all(reqs)
            # The data is here; the emulated network decides when it may be used.
            ends = self.emulator.wait(meta, self.iteration)
            if self.recorder is not None:
                for m, end in zip(meta, ends):
                    self.recorder.transfer(m, t_post, end)
            return
        if self.recorder is None or not reqs:
            self._wait_all(reqs)
            return
        if len(reqs) == 1:
            # One request (a worker with one server): waiting for it is waiting for all, and cheapest.
            self._wait_all(reqs)
            self.recorder.transfer(meta[0], t_post, self.clock())
            return
        # With a recorder, stamp each transfer as it completes, so traces show per-shard times.
        # Testsome, not Waitany: on an oversubscribed node MPICH's Waitany spins through whole
        # scheduler time slices (measured: 4 ranks on 2 cores, 5-12 ms per exchange against 0.1-2 ms
        # for Waitall). Between polls the rank waits as _wait_all does, so that tracing does not
        # change how ranks share the cores: a sleep when ranks outnumber cores, else a yield.
        done = 0
        while done < len(reqs):
            finished = MPI.Request.Testsome(reqs)
            if not finished:
                if self.sleep_wait:
                    time.sleep(SLEEP_WAIT_S)
                else:
                    os.sched_yield()
                continue
            now = self.clock()
            for i in finished:
                self.recorder.transfer(meta[i], t_post, now)
            done += len(finished)

    def _wait_all(self, reqs: list) -> None:
        if not self.sleep_wait:
            MPI.Request.Waitall(reqs)
            return
        while not MPI.Request.Testall(reqs):
            time.sleep(SLEEP_WAIT_S)

    def gather_params(self, n_elements: int, root: int = 0) -> np.ndarray | None:
        """The whole current parameter vector on root (None elsewhere): for evaluation and checkpoints."""
        reqs = []
        full = np.empty(n_elements, dtype=np.float32) if self.rank == root else None
        for s in self.shards:
            state = self.served.get(s.index)
            if self.rank == root:
                if state is not None:
                    full[s.start:s.stop] = state.params
                else:
                    reqs.append(self.comm.Irecv(full[s.start:s.stop], source=s.server, tag=GATHER_TAG + s.index))
            elif state is not None:
                reqs.append(self.comm.Isend(state.params, dest=root, tag=GATHER_TAG + s.index))
        MPI.Request.Waitall(reqs)
        return full
