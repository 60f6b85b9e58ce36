"""The trace recorder's collective parts on real MPI ranks (any size >= 2; make test runs 3 and 5):
clock offsets against rank 0, and flushes that bring every rank's events into rank 0's file."""

import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from hpcps.ps.exchange import Transfer
from hpcps.ps.sharding import plan_shards
from hpcps.trace.clock import estimate_offsets
from hpcps.trace.recorder import SKEW_ENV, TraceRecorder
from hpcps.trace.schema import PHASE


@pytest.fixture
def shared_dir():
    comm = MPI.COMM_WORLD
    path = Path(comm.bcast(tempfile.mkdtemp() if comm.Get_rank() == 0 else None, root=0))
    yield path
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.mpi(min_size=2)
def test_clock_offsets_recover_a_known_skew():
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    est = estimate_offsets(comm, clock=lambda: time.perf_counter() + 3.0 * rank)
    assert abs(est.offset_s - 3.0 * rank) <= est.rtt_s / 2 + 1e-6
    assert (est.rtt_s == 0) == (rank == 0)


@pytest.mark.mpi(min_size=2)
def test_many_flushes_bring_every_rank_into_one_file(shared_dir, monkeypatch):
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    monkeypatch.setenv(SKEW_ENV, "0.5")
    path = shared_dir / "t.h5"
    shards = plan_shards(1000, [0])
    rec = TraceRecorder(comm, path, flush_s=1e-4, max_flush_iterations=7)
    assert rec.shift == 0.5 * rank
    rec.begin_run(device="cpu", threads=1, batch=rank + 1, is_server=rank == 0, is_worker=True, shards=shards)
    n = 40
    for it in range(n):
        rec.begin_iteration(it)
        t = [time.perf_counter() + 1e-6 * i for i in range(10)]
        if rank != 0:
            rec.transfer(Transfer("push", "send", 0, 0, 4000), t[6], t[7])   # inside the push window
        else:
            for peer in range(1, size):
                rec.transfer(Transfer("push", "recv", 0, peer, 4000), t[6], t[7])
        if it % 10 == 0:
            rec.phase("report", t[9], time.perf_counter())
        rec.iteration(*t, loss=float(it))
        comm.Barrier()      # stands for the exchange that keeps BSP ranks in step
    rec.end_run()
    rec.close({"done": 1})
    comm.Barrier()
    if rank != 0:
        return
    from hpcps.trace import open_trace
    tr = open_trace(path)
    assert tr.complete and tr.attrs["done"] == 1
    assert tr.ranks["rank"].tolist() == list(range(size))
    assert [abs(o - 0.5 * r) <= rtt / 2 + 1e-6 for r, o, rtt in
            zip(tr.ranks["rank"], tr.ranks["clock_offset_s"], tr.ranks["clock_rtt_s"])] == [True] * size
    comp = tr.phase("compute")
    for r in range(size):
        mine = comp[comp["rank"] == r]
        assert sorted(mine["iteration"].tolist()) == list(range(n)) and (mine["batch"] == r + 1).all()
    assert tr.iterations["iteration"].tolist() == list(range(n))
    k = np.arange(1, size + 1)
    assert tr.iterations["loss"] == pytest.approx(np.arange(n))     # every worker's loss is the iteration
    assert (tr.iterations["samples"] == k.sum()).all()
    flushes = tr.phase("trace")
    assert np.unique(flushes["iteration"]).size >= 5 and set(flushes["rank"].tolist()) == set(range(size))
    assert np.all(np.diff(np.unique(flushes["iteration"])) >= 2)
    recv = tr.transfers[tr.transfers["rank"] == 0]
    assert recv.size == n * (size - 1) and np.isfinite(recv["t_start"]).all()
    assert (tr.phase("report")["iteration"] % 10 == 0).all()
    assert not math.isnan(tr.attrs["t0_unix_s"]) and PHASE["wait"] in set(tr.events["phase"].tolist())
