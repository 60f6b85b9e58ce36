"""Several ranks as threads of this process, for unit tests of code that talks to other ranks.

ThreadComm stands for an mpi4py communicator of n ranks whose ranks are threads. Point-to-point
messages are real MPI messages: the ones from rank s to rank d go through a communicator of their own
(a duplicate of MPI.COMM_SELF), so that requests are real mpi4py requests (MPI.Request.Testsome and
the like work on them) and tags keep their meaning. Collectives (blocking, and the non-blocking ones
the runtime posts) are met in Python: the k-th collective call of every rank on a communicator is one
operation, complete once every rank has made it.

run_ranks(n, fn) runs fn(comm) on n threads and returns their results in rank order, raising the first
rank's error; a rank that does not finish in time fails the test instead of holding it.
"""

from __future__ import annotations

import copy
import threading
import time

import numpy as np
from mpi4py import MPI

WAIT_S = 15.0          # a run of these tests takes 0.2 s (3 s for the first, importing) on a loaded machine


class _Hub:
    """What the ranks of one communicator share."""

    def __init__(self, n: int):
        self.n = n
        self.cond = threading.Condition()
        self.ops: dict[int, dict[int, object]] = {}
        self.children: dict[int, _Hub] = {}
        self.pairs = [[MPI.COMM_SELF.Dup() for _ in range(n)] for _ in range(n)]
        self.failed: BaseException | None = None

    def free(self) -> None:
        for row in self.pairs:
            for c in row:
                c.Free()
        for child in self.children.values():
            child.free()


class _Request:
    """A non-blocking collective: complete once every rank has posted it."""

    def __init__(self, comm: ThreadComm, seq: int, finish=None):
        self.comm, self.seq, self.finish, self.done = comm, seq, finish, False

    def Test(self) -> bool:
        if not self.done and self.comm._complete(self.seq):
            if self.finish is not None:
                self.finish(self.comm._values(self.seq))
            self.done = True
        return self.done

    def Wait(self) -> None:
        self.comm._wait(self.seq)
        self.Test()


class ThreadComm:
    def __init__(self, hub: _Hub, rank: int):
        self.hub, self.rank, self.seq = hub, rank, 0

    # -- who ------------------------------------------------------------------------------------
    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.hub.n

    def Get_attr(self, key):
        return MPI.COMM_SELF.Get_attr(key)

    # -- point to point ---------------------------------------------------------------------------
    def Isend(self, buf, dest: int, tag: int = 0):
        return self.hub.pairs[self.rank][dest].Isend(buf, dest=0, tag=tag)

    def Irecv(self, buf, source: int, tag: int = 0):
        return self.hub.pairs[source][self.rank].Irecv(buf, source=0, tag=tag)

    # -- collectives ------------------------------------------------------------------------------
    def _post(self, value) -> int:
        seq = self.seq
        self.seq += 1
        with self.hub.cond:
            self.hub.ops.setdefault(seq, {})[self.rank] = value
            self.hub.cond.notify_all()
        return seq

    def _complete(self, seq: int) -> bool:
        with self.hub.cond:
            return len(self.hub.ops[seq]) == self.hub.n

    def _values(self, seq: int) -> list:
        with self.hub.cond:
            return [self.hub.ops[seq][r] for r in range(self.hub.n)]

    def _wait(self, seq: int) -> list:
        deadline = time.monotonic() + WAIT_S
        with self.hub.cond:
            while len(self.hub.ops[seq]) < self.hub.n:
                if self.hub.failed is not None:
                    raise RuntimeError("another rank failed") from self.hub.failed
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank {self.rank}: collective {seq} not reached by every rank")
                self.hub.cond.wait(0.05)
        return self._values(seq)

    def _collective(self, value) -> list:
        return self._wait(self._post(value))

    def Barrier(self) -> None:
        self._collective(None)

    def Ibarrier(self) -> _Request:
        return _Request(self, self._post(None))

    def Bcast(self, buf, root: int = 0) -> None:
        values = self._collective(np.array(buf, copy=True) if self.rank == root else None)
        if self.rank != root:
            buf[...] = values[root]

    def bcast(self, obj, root: int = 0):
        return copy.deepcopy(self._collective(obj if self.rank == root else None)[root])

    def Ibcast(self, buf, root: int = 0) -> _Request:
        seq = self._post(np.array(buf, copy=True) if self.rank == root else None)

        def finish(values):
            if self.rank != root:
                buf[...] = values[root]
        return _Request(self, seq, finish)

    def gather(self, obj, root: int = 0):
        values = self._collective(copy.deepcopy(obj))
        return values if self.rank == root else None

    def allgather(self, obj):
        return copy.deepcopy(self._collective(obj))

    def scatter(self, objs, root: int = 0):
        return copy.deepcopy(self._collective(objs if self.rank == root else None)[root][self.rank])

    def Reduce(self, sendbuf, recvbuf, op=None, root: int = 0) -> None:
        assert op in (None, MPI.SUM)
        values = self._collective(np.array(sendbuf, copy=True))
        if self.rank == root:
            recvbuf[...] = np.sum(values, axis=0)

    def Ireduce(self, sendbuf, recvbuf, op=None, root: int = 0) -> _Request:
        assert op in (None, MPI.SUM)
        seq = self._post(np.array(sendbuf, copy=True))

        def finish(values):
            if self.rank == root:
                recvbuf[...] = np.sum(values, axis=0)
        return _Request(self, seq, finish)

    def Dup(self) -> ThreadComm:
        seq = self._post(None)
        with self.hub.cond:
            child = self.hub.children.get(seq)
            if child is None:
                child = self.hub.children[seq] = _Hub(self.hub.n)
        self._wait(seq)
        return ThreadComm(child, self.rank)

    def Split_type(self, _kind, key: int = 0) -> ThreadComm:
        return self.Dup()              # every rank is on this one node

    def Free(self) -> None:
        pass

    def Abort(self, code: int = 1):
        raise RuntimeError(f"rank {self.rank} aborted with {code}")


def run_ranks(n: int, fn, timeout_s: float = WAIT_S) -> list:
    """fn(comm) on n threads, one a rank; their results in rank order. Raises the first error."""
    hub = _Hub(n)
    results: list = [None] * n
    errors: list = [None] * n

    def one(r: int) -> None:
        try:
            results[r] = fn(ThreadComm(hub, r))
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            errors[r] = e
            with hub.cond:
                hub.failed = e
                hub.cond.notify_all()

    threads = [threading.Thread(target=one, args=(r,), daemon=True, name=f"rank-{r}") for r in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    for e in errors:
        if e is not None:
            raise e
    if stuck:
        raise TimeoutError(f"{', '.join(stuck)} did not finish in {timeout_s} s")
    hub.free()
    return results
